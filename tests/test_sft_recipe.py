"""recipes/sft.py end to end on a tiny model: validation files and metrics, and memorisation of 8 examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_math.data import format_prompt, load_prompt_template
from trl_math.grading import r1_zero_reward_fn
from trl_math.synthetic import make_arithmetic_splits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def response_nll(model_dir, rows) -> float:
    """Mean over examples of the summed NLL of response + EOS, from a plain log_softmax of the logits."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    total = 0.0
    for row in rows:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([prompt + response])).logits[0].double(), dim=-1)
        targets = torch.tensor(response)
        total -= log_probs[len(prompt) - 1 : -1].gather(1, targets[:, None]).sum().item()
    return total / len(rows)


def test_sft_recipe_memorises_and_validates(tiny_checkpoint, tmp_path):
    template = load_prompt_template("r1_zero")
    splits = make_arithmetic_splits(11, {"train": 8, "validation": 4})
    train = [{"prompt": format_prompt(template, r["problem"]), "response": r["trace"], "ground_truth": r["answer"]}
             for r in splits["train"]]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in train))
    (tmp_path / "validation.jsonl").write_text(
        "".join(json.dumps({"problem": r["problem"], "answer": r["answer"]}) + "\n" for r in splits["validation"])
    )
    out = tmp_path / "run"
    command = [
        sys.executable, os.path.join(REPO, "recipes", "sft.py"),
        "--model_name_or_path", str(tiny_checkpoint), "--dtype", "float32",
        "--sft_source", str(tmp_path / "sft.jsonl"), "--eval_source", str(tmp_path / "validation.jsonl"),
        "--output_dir", str(out), "--bf16", "false", "--use_cpu", "true", "--report_to", "none",
        "--per_device_train_batch_size", "8", "--max_steps", "30", "--learning_rate", "3e-3",
        "--lr_scheduler_type", "constant", "--logging_steps", "5", "--save_strategy", "no",
        "--eval_strategy", "steps", "--eval_steps", "15", "--eval_max_tokens", "12", "--num_logged_generations", "2",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    before, after = response_nll(tiny_checkpoint, train), response_nll(out, train)
    assert after <= 0.5 * before, (before, after)

    for step in (15, 30):  # validation at both evaluation steps, nothing more (30 was the last step)
        folder = out / "eval" / f"eval-step{step:06d}"
        records = [json.loads(line) for line in (folder / "generations.jsonl").open()]
        assert [r["ground_truth"] for r in records] == [r["answer"] for r in splits["validation"]]
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["n"] == 4 and summary["step"] == step
        assert summary["answer_accuracy"] == sum(r["answer_reward"] for r in records) / 4
        generations = [json.loads(line) for line in (out / "generations" / f"step{step:06d}.jsonl").open()]
        assert len(generations) == 2 and all("mean_token_entropy" in g for g in generations)
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["eval-step000015", "eval-step000030"]

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    validations = [m for m in metrics if "eval_answer_accuracy" in m]
    assert [m["step"] for m in validations] == [15, 30]
    for logged in validations:  # the logged accuracy is the course grader's mean on the written records
        folder = out / "eval" / f"eval-step{logged['step']:06d}"
        records = [json.loads(line) for line in (folder / "generations.jsonl").open()]
        regraded = [r1_zero_reward_fn(r["response"], r["ground_truth"]) for r in records]
        assert logged["eval_answer_accuracy"] == sum(r["answer_reward"] for r in regraded) / 4
        assert logged["eval_format_accuracy"] == sum(r["format_reward"] for r in regraded) / 4
    assert json.loads((out / "sft_data.json").read_text()) == {"num_examples": 8, "num_selected": 8}
    assert (out / "model.safetensors").exists()

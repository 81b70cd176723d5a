"""InstructionTuningTrainer: next-token cross-entropy on packed chunks (no double shift), and the recipe end to end."""

from __future__ import annotations

import copy
import gzip
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, TrlParser

from trl_math.supplement.instruction_data import InstructionDataArguments, PackedSFTDataset
from trl_math.supplement.instruction_tuning import InstructionTuningConfig, InstructionTuningTrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["apple", "river", "stone", "cloud", "green", "seven", "paper", "light"]


def rows(n: int, offset: int = 0) -> list[dict]:
    """Instructions to repeat a word; the response repeats it three times."""
    return [
        {"prompt": f"Repeat the word {WORDS[(i + offset) % len(WORDS)]} three times.",
         "response": " ".join([WORDS[(i + offset) % len(WORDS)]] * 3)}
        for i in range(n)
    ]


def write_gz(path, records):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in records))
    return path


def config(tmp_path, **overrides) -> InstructionTuningConfig:
    values = dict(output_dir=str(tmp_path / "run"), bf16=False, use_cpu=True, report_to="none", save_strategy="no",
                  gradient_checkpointing=False, dataloader_num_workers=0)
    return InstructionTuningConfig(**(values | overrides))


def next_token_cross_entropy(model, input_ids, labels) -> torch.Tensor:
    """The course's loss: F.cross_entropy of logits[t] against labels[t], over every token."""
    logits = model(input_ids).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))


def test_loss_and_gradients_are_the_course_cross_entropy(tiny_model, tiny_tokenizer, tmp_path):
    packed = PackedSFTDataset(tiny_tokenizer, write_gz(tmp_path / "train.jsonl.gz", rows(6)), 24, shuffle=False)
    assert len(packed) >= 4
    input_ids = torch.stack([packed[i]["input_ids"] for i in range(4)])
    labels = torch.stack([packed[i]["labels"] for i in range(4)])

    reference = copy.deepcopy(tiny_model)  # before the trainer patches the model's forward
    expected = next_token_cross_entropy(reference, input_ids, labels)
    expected.backward()
    with torch.no_grad():  # what a second shift (TRL's default handling of `labels`) would compute instead
        logits = reference(input_ids).logits
        double_shift = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))
    assert abs(double_shift.item() - expected.item()) > 0.01

    trainer = InstructionTuningTrainer(tiny_model, args=config(tmp_path), train_dataset=packed,
                                       processing_class=tiny_tokenizer)
    batch = trainer.data_collator([{"split": "train", "chunk": i} for i in range(4)])
    assert torch.equal(batch["input_ids"], input_ids) and torch.equal(batch["shift_labels"], labels)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    loss.backward()
    for (name, p), (_, q) in zip(trainer.model.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_trainer_takes_packed_datasets_only_and_rejects_trl_packing(tiny_model, tiny_tokenizer, tmp_path):
    from datasets import Dataset

    with pytest.raises(TypeError, match="train_dataset: expected a PackedSFTDataset"):
        InstructionTuningTrainer(tiny_model, args=config(tmp_path), train_dataset=Dataset.from_list(rows(2)))
    with pytest.raises(ValueError, match="packing"):
        config(tmp_path, packing=True)
    with pytest.raises(ValueError, match="max_length"):
        config(tmp_path, max_length=512)
    defaults = InstructionTuningConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True)
    assert (defaults.learning_rate, defaults.lr_scheduler_type, defaults.warmup_steps, defaults.num_train_epochs) == (
        2e-5, "cosine", 0.03, 1.0)
    assert defaults.per_device_train_batch_size * defaults.gradient_accumulation_steps == 32


def test_the_llama31_config_is_the_course_setup(tmp_path):
    parser = TrlParser((InstructionDataArguments, InstructionTuningConfig, ModelConfig))
    data, args, model = parser.parse_args_and_config([
        "--config", os.path.join(REPO, "recipes", "configs", "instruction_tuning", "llama31_8b.yaml"),
        "--bf16", "false", "--use_cpu", "true", "--output_dir", str(tmp_path),  # bf16 does not validate without a GPU
    ])
    assert (model.model_name_or_path, model.dtype, model.attn_implementation) == (
        "meta-llama/Llama-3.1-8B", "bfloat16", "flash_attention_2")
    assert data.seq_length == 512
    assert data.train_source.endswith("train.jsonl.gz") and data.eval_source.endswith("test.jsonl.gz")
    assert (args.learning_rate, args.lr_scheduler_type, args.warmup_steps) == (2e-5, "cosine", 0.03)
    assert args.num_train_epochs == 1
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 32
    assert args.eval_strategy == "steps" and args.dataset_kwargs == {"skip_prepare_dataset": True}


@pytest.mark.slow
def test_recipe_trains_validates_and_saves(tiny_checkpoint, tmp_path):
    train, test = write_gz(tmp_path / "train.jsonl.gz", rows(24)), write_gz(tmp_path / "test.jsonl.gz", rows(6, offset=3))
    out = tmp_path / "run"
    command = [
        sys.executable, os.path.join(REPO, "recipes", "instruction_tuning.py"),
        "--model_name_or_path", str(tiny_checkpoint), "--dtype", "float32",
        "--train_source", str(train), "--eval_source", str(test), "--seq_length", "32",
        "--output_dir", str(out), "--bf16", "false", "--use_cpu", "true", "--report_to", "none",
        "--gradient_checkpointing", "false", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
        "--max_steps", "8", "--learning_rate", "3e-3", "--logging_steps", "1",
        "--eval_strategy", "steps", "--eval_steps", "4", "--save_strategy", "no",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    evals = {m["step"]: m["eval_loss"] for m in metrics if "eval_loss" in m}
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert sorted(evals) == [4, 8] and evals[8] < evals[4]

    # The saved model and tokenizer reproduce the last validation loss: mean cross-entropy over the test chunks.
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    packed = PackedSFTDataset(tokenizer, test, 32, shuffle=False)
    with torch.no_grad():
        loss = next_token_cross_entropy(
            model, torch.stack([packed[i]["input_ids"] for i in range(len(packed))]),
            torch.stack([packed[i]["labels"] for i in range(len(packed))]),
        )
    assert loss.item() == pytest.approx(evals[8], rel=1e-4)

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
    # one process: micro-batches of 2 (the course's), 16 of them, 32 sequences per optimizer step
    assert (defaults.total_train_batch_size, defaults.per_device_train_batch_size,
            defaults.gradient_accumulation_steps) == (32, 2, 16)


def test_the_batch_is_a_total_over_processes(tmp_path, monkeypatch):
    assert config(tmp_path, total_train_batch_size=32, gradient_accumulation_steps=4).per_device_train_batch_size == 8
    with pytest.raises(ValueError, match=r"per_device_train_batch_size: is derived .* = 2; do not set it \(got 4\)"):
        config(tmp_path, per_device_train_batch_size=4)
    monkeypatch.setenv("WORLD_SIZE", "3")  # 32 sequences do not split into 16 micro-batches on each of 3 processes
    with pytest.raises(ValueError, match=r"total_train_batch_size \(32\) must be divisible by "
                                         r"gradient_accumulation_steps \(16\) x processes \(3\)"):
        config(tmp_path)


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
    assert (args.total_train_batch_size, args.per_device_train_batch_size) == (32, 2)  # on one GPU
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
        "--gradient_checkpointing", "false", "--total_train_batch_size", "8", "--gradient_accumulation_steps", "2",
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


@pytest.mark.slow
def test_a_two_process_step_trains_on_the_courses_32_sequences(tiny_checkpoint, tiny_tokenizer, tmp_path):
    """Two gloo processes (`accelerate launch --multi_gpu --num_processes 2`) with the default batch: one optimizer
    step takes 32 sequences in all (16 micro-batches of 1 on each process), not 32 on each."""
    train = write_gz(tmp_path / "train.jsonl.gz", rows(80))
    assert len(PackedSFTDataset(tiny_tokenizer, train, 16, shuffle=False)) >= 64  # enough for 64 in one step
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        os.path.join(REPO, "recipes", "instruction_tuning.py"),
        "--model_name_or_path", str(tiny_checkpoint), "--dtype", "float32", "--train_source", str(train),
        "--seq_length", "16", "--output_dir", str(out), "--bf16", "false", "--use_cpu", "true", "--report_to", "none",
        "--gradient_checkpointing", "false", "--max_steps", "1", "--logging_steps", "1", "--save_strategy", "no",
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    (logged,) = [json.loads(line) for line in (out / "metrics.jsonl").open() if '"loss"' in line]
    # TRL's num_tokens: the attention-mask tokens of every micro-batch, summed over the processes
    assert (logged["step"], logged["num_tokens"]) == (1, 32 * 16)

"""The per-instance DPO loss against a float64 reference, AlpacaDPOTrainer against it, and recipes/dpo.py end to end."""

from __future__ import annotations

import copy
import gzip
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from trl import ModelConfig, TrlParser

from conftest import SHARED_DIR
from trl_math.supplement.dpo_loss import compute_per_instance_dpo_loss
from trl_math.supplement.dpo_trainer import AlpacaDPOConfig, AlpacaDPOTrainer
from trl_math.supplement.hh import HH_SUBSETS, HHDataArguments
from trl_math.tiny_models import build_tiny_qwen2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = [  # the course's example first; the second chosen response starts with a newline, which merges with the prompt's
    {"instruction": "The quick brown fox jumps over", "chosen": "the lazy dog.", "rejected": "their crazy frog."},
    {"instruction": "Name a prime number.", "chosen": "\n7 is prime.", "rejected": "8."},
    {"instruction": "Say {hello} with braces.", "chosen": "{hello}", "rejected": "hello"},
    {"instruction": "What is 2 + 2?", "chosen": "2 + 2 = 4.", "rejected": "It is 5, of course, as everyone knows."},
]


def course_text(prompt: str, response: str) -> str:
    return (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        f"### Instruction:\n{prompt}\n\n### Response:\n{response}"
    )


def reference_dpo_loss(lm, lm_ref, tokenizer, beta, prompt, chosen, rejected) -> float:
    """The course's formula in float64 from both models' log_softmax, one document at a time."""

    def log_prob(model, response):
        ids = tokenizer(course_text(prompt, response))["input_ids"] + [tokenizer.eos_token_id]
        model = copy.deepcopy(model).double()
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        return sum(log_probs[t - 1, ids[t]].item() for t in range(1, len(ids)))

    delta = (log_prob(lm, chosen) - log_prob(lm_ref, chosen)) - (log_prob(lm, rejected) - log_prob(lm_ref, rejected))
    return -math.log(1 / (1 + math.exp(-beta * delta)))


def test_per_instance_loss_is_the_course_formula(llama_tokenizer):
    size = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)  # vocabulary: 128k
    lm, lm_ref = build_tiny_qwen2(llama_tokenizer, **size, seed=0), build_tiny_qwen2(llama_tokenizer, **size, seed=1)
    lm64, lm_ref64 = copy.deepcopy(lm).double(), copy.deepcopy(lm_ref).double()
    for pair, beta in zip(PAIRS, (0.5, 0.1, 2.0, 1.0)):
        args = (llama_tokenizer, beta, pair["instruction"], pair["chosen"], pair["rejected"])
        expected = reference_dpo_loss(lm, lm_ref, *args)
        exact = compute_per_instance_dpo_loss(lm64, lm_ref64, *args)  # the same arithmetic in float64
        assert exact.shape == () and exact.item() == pytest.approx(expected, rel=1e-10)
        # float32: sums of ~50 log-probs over a 128k vocabulary, each good to ~1e-6
        assert compute_per_instance_dpo_loss(lm, lm_ref, *args).item() == pytest.approx(expected, abs=5e-4)
    assert abs(expected - math.log(2)) > 1e-3  # the two models disagree: the check is not of a constant


def test_per_instance_loss_lives_on_the_policy_and_trains_it_only(tiny_tokenizer):
    # One CPU cannot hold two devices; what it shows: a reference in another dtype (float64) is scored on its own
    # parameters and converted to the policy's dtype and device, and no gradient reaches it.
    lm = build_tiny_qwen2(tiny_tokenizer, seed=0)
    lm_ref = build_tiny_qwen2(tiny_tokenizer, seed=1).double()
    loss = compute_per_instance_dpo_loss(lm, lm_ref, tiny_tokenizer, 0.1, "Say hi.", "Hi!", "No.")
    assert (loss.device, loss.dtype) == (next(lm.parameters()).device, torch.float32)
    loss.backward()
    assert all(p.grad is not None for p in lm.parameters())
    assert all(p.grad is None for p in lm_ref.parameters())
    expected = reference_dpo_loss(lm, lm_ref, tiny_tokenizer, 0.1, "Say hi.", "Hi!", "No.")
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def dpo_config(tmp_path, **overrides) -> AlpacaDPOConfig:
    values = dict(output_dir=str(tmp_path / "run"), bf16=False, use_cpu=True, report_to="none", save_strategy="no",
                  eval_strategy="no", load_best_model_at_end=False, gradient_checkpointing=False,
                  dataloader_num_workers=0, total_train_batch_size=4, gradient_accumulation_steps=1)
    return AlpacaDPOConfig(**(values | overrides))


@pytest.mark.parametrize("ref_model_device", [None, "cpu"])
def test_trainer_loss_and_gradients_are_the_mean_per_instance_loss(tiny_tokenizer, tmp_path, ref_model_device):
    policy, reference = build_tiny_qwen2(tiny_tokenizer, seed=0), build_tiny_qwen2(tiny_tokenizer, seed=1)
    beta = 0.3
    expected_model = copy.deepcopy(policy)  # before the trainer patches the policy's forward
    expected = torch.stack([
        compute_per_instance_dpo_loss(expected_model, reference, tiny_tokenizer, beta, p["instruction"], p["chosen"],
                                      p["rejected"])
        for p in PAIRS
    ]).mean()
    expected.backward()

    trainer = AlpacaDPOTrainer(policy, ref_model=copy.deepcopy(reference), processing_class=tiny_tokenizer,
                               args=dpo_config(tmp_path, beta=beta, ref_model_device=ref_model_device),
                               train_dataset=Dataset.from_list(PAIRS))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    loss.backward()
    for (name, p), (_, q) in zip(trainer.model.named_parameters(), expected_model.named_parameters(), strict=True):
        # float32: the prompt's terms, which TRL leaves out, cancel in the course's gradient only to ~1e-6
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * q.grad.abs().max().item(), msg=name)


# The supplement's DPO settings (section 5.4, problem dpo_training), each with the lines of its text that set it.
SUPPLEMENT = SHARED_DIR / "reference" / "cs336_a5_supplement_safety_rlhf.txt"
BATCH_BETA_LR = "We recommend you start with a batch size of 64, β = 0.1, and a learning rate of 1e − 6."
BEST = "epoch over HH. Save your model with the highest validation accuracy."
DPO_DEFAULTS = {
    "optim": ("rmsprop", ["we will stick to the RMSprop optimizer (torch.optim.RMSprop)"]),
    "total_train_batch_size": (64, [BATCH_BETA_LR]),
    "beta": (0.1, [BATCH_BETA_LR]),
    "learning_rate": (1e-6, [BATCH_BETA_LR]),
    "num_train_epochs": (1, ["train your instruction-tuned Llama 3.1 8B model for 1", BEST]),  # a page break between
    "logging_steps": (1, ["Train your model with DPO loss and gradient accumulation, tracking your loss at each step."]),
    "eval_strategy": ("steps", ["we ask you to keep track of the “classification accuracy” of the implicit reward"]),
    "metric_for_best_model": ("eval_rewards/accuracies", [
        "we ask you to keep track of the “classification accuracy” of the implicit reward",
        "consider an example to be correctly classified when the chosen completion has higher log-"]),
    "load_best_model_at_end": (True, [BEST]),
    "greater_is_better": (True, [BEST]),
}
HH_DEFAULTS = {"validation_size": (200, ["Separate out a small number of examples (e.g., 200) as a validation set."])}


def test_config_defaults_are_the_supplements(tmp_path):
    args, hh = AlpacaDPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True), HHDataArguments()
    for owner, defaults in ((args, DPO_DEFAULTS), (hh, HH_DEFAULTS)):
        for name, (value, _) in defaults.items():
            assert getattr(owner, name) == value, name
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 32)  # in one process
    assert args.loss_type == ["sigmoid"] and args.max_length is None  # the course's loss on whole documents


def test_the_supplement_says_so():
    if not SUPPLEMENT.exists():
        pytest.skip(f"the supplement's text is not at {SUPPLEMENT}")
    text = " ".join(SUPPLEMENT.read_text(encoding="utf-8").split())
    for name, (_, lines) in (DPO_DEFAULTS | HH_DEFAULTS).items():
        for line in lines:
            assert " ".join(line.split()) in text, (name, line)


def test_config_rejects_other_objectives(tmp_path):
    for option, value in [("loss_type", "ipo"), ("ld_alpha", 0.5), ("use_weighting", True), ("label_smoothing", 0.1)]:
        with pytest.raises(ValueError, match=option):
            AlpacaDPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, **{option: value})


def test_validation_pairs_must_fill_evaluation_batches(tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="do not fill evaluation batches of 3"):
        AlpacaDPOTrainer(build_tiny_qwen2(tiny_tokenizer), processing_class=tiny_tokenizer,
                         args=dpo_config(tmp_path, per_device_eval_batch_size=3),
                         train_dataset=Dataset.from_list(PAIRS), eval_dataset=Dataset.from_list(PAIRS))
    with pytest.raises(ValueError, match=r"columns \['instruction'\] are missing"):
        AlpacaDPOTrainer(build_tiny_qwen2(tiny_tokenizer), processing_class=tiny_tokenizer, args=dpo_config(tmp_path),
                         train_dataset=Dataset.from_list([{"prompt": "x", "chosen": "a", "rejected": "b"}]))


def test_the_hh_config_is_the_course_setup(tmp_path):
    parser = TrlParser((HHDataArguments, AlpacaDPOConfig, ModelConfig))
    hh, args, model = parser.parse_args_and_config([
        "--config", os.path.join(REPO, "recipes", "configs", "dpo", "hh.yaml"),
        "--bf16", "false", "--use_cpu", "true", "--output_dir", str(tmp_path),
    ])
    assert args.ref_model_device == "cuda:1"  # the course's layout; policy on cuda:0
    assert hh.hh_sources == ["data/hh"] and hh.validation_size == 200
    assert 200 % args.per_device_eval_batch_size == 0
    assert (args.optim, args.learning_rate, args.beta, args.max_length) == ("rmsprop", 1e-6, 0.1, None)
    assert (args.total_train_batch_size, args.per_device_train_batch_size, args.num_train_epochs) == (64, 2, 1)
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_rewards/accuracies"
    assert args.save_steps == args.eval_steps
    assert model.model_name_or_path == "runs/instruction-tuning-llama31-8b"
    _, one_gpu, _ = parser.parse_args_and_config([
        "--config", os.path.join(REPO, "recipes", "configs", "dpo", "hh.yaml"),
        "--bf16", "false", "--use_cpu", "true", "--ref_model_device", "null", "--output_dir", str(tmp_path),
    ])
    assert one_gpu.ref_model_device is None


def write_hh(folder, pairs_by_subset):
    folder.mkdir(parents=True, exist_ok=True)
    for subset, pairs in pairs_by_subset.items():
        with gzip.open(folder / f"{subset}.jsonl.gz", "wt", encoding="utf-8") as handle:
            for human, chosen, rejected in pairs:
                handle.write(json.dumps({"chosen": f"\n\nHuman: {human}\n\nAssistant: {chosen}",
                                         "rejected": f"\n\nHuman: {human}\n\nAssistant: {rejected}"}) + "\n")


@pytest.mark.slow
def test_recipe_learns_the_preference_and_saves_the_best_checkpoint(tiny_checkpoint, tmp_path):
    things = ["tea", "rain", "music", "snow", "bread", "maps", "bees", "clocks", "ships", "salt"]
    pairs = [(f"Do you like {thing} number {i}?", f"Yes, I like {thing}.", f"No. {thing} is bad.")
             for i in range(4) for thing in things]  # 40 pairs, 10 per file; the preference: answer yes
    write_hh(tmp_path / "hh", {subset: pairs[k::4] for k, subset in enumerate(HH_SUBSETS)})
    out = tmp_path / "run"
    command = [
        sys.executable, os.path.join(REPO, "recipes", "dpo.py"),
        "--model_name_or_path", str(tiny_checkpoint), "--dtype", "float32",
        "--hh_sources", str(tmp_path / "hh"), "--validation_size", "8",
        "--output_dir", str(out), "--bf16", "false", "--use_cpu", "true", "--report_to", "none",
        "--gradient_checkpointing", "false", "--total_train_batch_size", "8", "--gradient_accumulation_steps", "2",
        "--max_steps", "12", "--learning_rate", "1e-3", "--beta", "0.1",
        "--eval_steps", "2", "--save_steps", "2", "--eval_on_start", "true", "--per_device_eval_batch_size", "4",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    accuracy = {m["step"]: m["eval_rewards/accuracies"] for m in metrics if "eval_rewards/accuracies" in m}
    assert sorted(accuracy) == [0, 2, 4, 6, 8, 10, 12]
    assert accuracy[0] == 0.0  # policy = reference: every implicit reward is 0, no pair is ranked right
    best = max(accuracy[s] for s in accuracy if s > 0)
    best_step = min(s for s in accuracy if s > 0 and accuracy[s] == best)  # ties: the earliest checkpoint
    assert best >= 0.75 and best_step < 12, accuracy
    assert all("loss" in m and "rewards/accuracies" in m for m in metrics if m["step"] > 0 and "eval_loss" not in m
               and "train_runtime" not in m)

    saved = load_file(out / "model.safetensors")
    best_weights = load_file(out / f"checkpoint-{best_step}" / "model.safetensors")
    last_weights = load_file(out / "checkpoint-12" / "model.safetensors")
    assert saved.keys() == best_weights.keys()
    assert all(torch.equal(saved[k], best_weights[k]) for k in saved)
    assert not all(torch.equal(saved[k], last_weights[k]) for k in saved)
    assert (out / "tokenizer.json").exists()

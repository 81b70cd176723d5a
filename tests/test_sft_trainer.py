"""MathSFTTrainer: the assignment's loss and gradients, data selection, validation on vLLM (fake engine)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from trl_math.data import format_prompt, load_prompt_template
from trl_math.logprobs import get_response_log_probs, tokenize_prompt_and_output
from trl_math.losses import sft_microbatch_train_step
from trl_math.sft_config import MathSFTConfig
from trl_math.sft_data import SFTCollator, load_sft_examples, select_sft_examples
from trl_math.sft_trainer import MathSFTTrainer
from trl_math.synthetic import make_arithmetic_splits

TEMPLATE = load_prompt_template("r1_zero")


def sft_rows(n: int) -> list[dict]:
    """r1_zero SFT examples whose responses differ in length (sums of 2, 3 or 4 operands, in turn)."""
    problems = {k: make_arithmetic_splits(k, {"train": n}, n_operands=k)["train"] for k in (2, 3, 4)}
    return [
        {"prompt": format_prompt(TEMPLATE, r["problem"]), "response": r["trace"], "ground_truth": r["answer"]}
        for r in (problems[2 + i % 3][i] for i in range(n))
    ]


def config(tmp_path, **overrides) -> MathSFTConfig:
    values = dict(
        output_dir=str(tmp_path / "run"), bf16=False, use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=1, num_logged_generations=0, dataloader_num_workers=0,
    )
    return MathSFTConfig(**(values | overrides))


def reference_gradients(model, tokenizer, rows, microbatches, normalize_constant=1.0):
    """Gradient summed over micro-batches of sft_microbatch_train_step, EOS appended to each response.

    Call it before a trainer wraps `model`: TRL patches the model's forward in place."""
    model = copy.deepcopy(model)
    model.zero_grad()
    losses = []
    for batch_rows in microbatches:
        batch = tokenize_prompt_and_output(
            [rows[i]["prompt"] for i in batch_rows], [rows[i]["response"] + tokenizer.eos_token for i in batch_rows], tokenizer
        )
        log_probs = get_response_log_probs(model, batch["input_ids"], batch["labels"])["log_probs"]
        loss, _ = sft_microbatch_train_step(log_probs, batch["response_mask"], len(microbatches), normalize_constant)
        losses.append(loss.item())
    return {name: p.grad.clone() for name, p in model.named_parameters()}, losses


def test_collator_is_tokenize_prompt_and_output_with_eos(tiny_tokenizer):
    rows = sft_rows(3)
    batch = SFTCollator(tiny_tokenizer)(rows)
    expected = tokenize_prompt_and_output([r["prompt"] for r in rows], [r["response"] for r in rows], tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    for i, row in enumerate(rows):
        n_prompt = len(tiny_tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
        n_response = len(tiny_tokenizer(row["response"], add_special_tokens=False)["input_ids"])
        labels = batch["labels"][i][batch["response_mask"][i]].tolist()
        assert labels == expected["labels"][i][expected["response_mask"][i]].tolist() + [eos]
        assert batch["response_mask"][i].sum() == n_response + 1
        assert batch["response_mask"][i].nonzero()[0].item() == n_prompt - 1  # first label after the prompt
    plain = SFTCollator(tiny_tokenizer, append_eos=False)(rows)
    assert all(torch.equal(plain[k], expected[k]) for k in expected)
    cut = SFTCollator(tiny_tokenizer, max_length=40)(rows)
    assert cut["input_ids"].shape[1] == 39 and torch.equal(cut["labels"], batch["labels"][:, :39])


def test_loss_and_gradients_on_a_fixed_batch(tiny_model, tiny_tokenizer, tmp_path):
    rows = sft_rows(4)
    expected_grads, (expected_loss,) = reference_gradients(tiny_model, tiny_tokenizer, rows, [[0, 1, 2, 3]], 7.0)
    trainer = MathSFTTrainer(tiny_model, args=config(tmp_path, normalize_constant=7.0), train_dataset=Dataset.from_list(rows),
                             processing_class=tiny_tokenizer)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, trainer.data_collator(rows))
    loss.backward()
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param.grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_one_optimizer_step_applies_the_summed_microbatch_gradients(tiny_model, tiny_tokenizer, tmp_path, accumulation):
    """Plain SGD with lr 1 and no clipping: the update is minus Trainer's accumulated gradient."""
    rows = sft_rows(4)
    args = config(tmp_path, per_device_train_batch_size=4 // accumulation, gradient_accumulation_steps=accumulation,
                  max_steps=1, max_grad_norm=0.0, lr_scheduler_type="constant", learning_rate=1.0)
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    # Equal micro-batches: the sum of their mean gradients over `accumulation` does not depend on the grouping.
    groups = [list(range(k, 4, accumulation)) for k in range(accumulation)]
    expected_grads, _ = reference_gradients(tiny_model, tiny_tokenizer, rows, groups)
    trainer = MathSFTTrainer(tiny_model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tiny_tokenizer,
                             optimizers=(torch.optim.SGD(tiny_model.parameters(), lr=1.0), None))
    trainer.train()
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(before[name] - param.detach(), expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_last_shorter_accumulation_window_is_scaled_like_the_assignment(tiny_model, tiny_tokenizer, tmp_path):
    """5 identical rows, micro-batches of 2, GA 2: windows of 2 and 1 micro-batches. Each micro-batch adds
    sft_microbatch_train_step's gradient (its mean / GA), so the short window's gradient is half the full one's."""
    rows = sft_rows(1) * 5
    (micro_batch_grad, _) = reference_gradients(tiny_model, tiny_tokenizer, rows, [[0, 1]])  # GA 1: the mean gradient
    grads = []

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    args = config(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, num_train_epochs=1,
                  max_grad_norm=0.0, lr_scheduler_type="constant", learning_rate=0.0)
    trainer = MathSFTTrainer(tiny_model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tiny_tokenizer,
                             optimizers=(torch.optim.SGD(tiny_model.parameters(), lr=0.0), None), callbacks=[Capture()])
    trainer.train()
    assert len(grads) == 2
    for name, expected in micro_batch_grad.items():
        torch.testing.assert_close(grads[0][name], expected, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(grads[1][name], expected / 2, rtol=1e-4, atol=1e-6, msg=name)


def test_config_rejects_what_the_trainer_does_not_implement(tmp_path):
    with pytest.raises(ValueError, match="MathSFTConfig: packing"):
        config(tmp_path, packing=True)
    with pytest.raises(ValueError, match="MathSFTConfig: normalize_constant"):
        config(tmp_path, normalize_constant=0.0)
    with pytest.raises(ValueError, match="MathSFTConfig: num_unique_examples"):
        config(tmp_path, num_unique_examples=0)
    assert config(tmp_path).dataset_kwargs == {"skip_prepare_dataset": True}


def test_select_examples_filters_correct_then_draws_a_seeded_subset():
    rows = sft_rows(12)
    wrong = {1, 4, 5, 9}  # responses whose answer is changed, or whose format is broken
    for i in wrong:
        rows[i]["response"] = rows[i]["response"].replace("<answer>", "<answer> 1") if i % 2 else rows[i]["response"].replace(
            "</think> ", "")
    from trl_math.grading import r1_zero_reward_fn

    data = Dataset.from_list(rows)
    kept, stats = select_sft_examples(data, r1_zero_reward_fn, True, None, seed=0)
    assert stats == {"num_examples": 12, "num_correct": 8, "num_selected": 8}
    assert kept["response"] == [r["response"] for i, r in enumerate(rows) if i not in wrong]
    subset, stats = select_sft_examples(data, r1_zero_reward_fn, False, 5, seed=3)
    again, _ = select_sft_examples(data, r1_zero_reward_fn, False, 5, seed=3)
    other, _ = select_sft_examples(data, r1_zero_reward_fn, False, 5, seed=4)
    assert stats == {"num_examples": 12, "num_selected": 5} and subset["prompt"] == again["prompt"] != other["prompt"]
    assert set(subset["prompt"]) <= set(data["prompt"]) and len(set(subset["prompt"])) == 5
    with pytest.raises(ValueError, match="num_unique_examples: asked for 13"):
        select_sft_examples(data, r1_zero_reward_fn, False, 13, seed=0)


def test_load_sft_examples_names_file_line_and_field(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "r", "ground_truth": 3}) + "\n\n"
                    + json.dumps({"prompt": "p", "ground_truth": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"sft\.jsonl:3: field 'response' is missing"):
        load_sft_examples(path)
    path.write_text(json.dumps({"prompt": "p", "response": "r", "ground_truth": 3}) + "\n"
                    + json.dumps({"prompt": "p", "response": "r"}) + "\n")
    assert load_sft_examples(path)["ground_truth"] == ["3", None]
    with pytest.raises(ValueError, match=r"sft\.jsonl:2: field 'ground_truth' is missing"):
        load_sft_examples(path, require_ground_truth=True)

"""MathGRPOTrainer against the assignment's functions, computed independently on the same rollouts.

The trainer runs TRL's real loop (generation with the tiny model, rewards, TRL's batching) and a callback
captures the accumulated gradients right before the optimizer step, while the weights are still the
initial ones. The reference recomputes, row by row and without padding, the response log-probs of a fresh
copy of the initial model, the rewards and advantages with `compute_group_normalized_rewards`, and the
loss and gradients with `grpo_microbatch_train_step` on the whole train batch at once.

Variable response lengths come from a stop string ("e") that cuts completions of the random tiny model
at varied places, which also exercises the transformers-generate stop path. A scripted completion on a real
Qwen tokenizer checks what the reward functions grade when the token that completes "</answer>" carries
more text.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainerCallback

from trl_math import batching
from trl_math.advantages import compute_group_normalized_rewards
from trl_math.grpo_config import MathGRPOConfig
from trl_math.grading import r1_zero_reward_fn
from trl_math.grpo_trainer import MathGRPOTrainer
from trl_math.logprobs import get_response_log_probs
from trl_math.losses import LENGTH_NORMALIZATIONS, LOSS_TYPES, grpo_microbatch_train_step

PROMPTS = ["What is 1+1?", "Simplify 48/2.", "How many clips did Natalia sell?", "Find x."]


def prompt_dataset(n_prompts: int = 4) -> Dataset:
    return Dataset.from_dict({"prompt": PROMPTS[:n_prompts], "ground_truth": ["2", "24", "72", "3"][:n_prompts]})


def varied_reward(completions, **kwargs) -> list[float]:
    """A deterministic reward with many distinct values, so groups have spread."""
    return [(len(text) % 5) / 4.0 for text in completions]


def constant_reward(completions, **kwargs) -> list[float]:
    return [1.0] * len(completions)


def tiny_config(tmp_path, **overrides) -> MathGRPOConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        bf16=False,
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        log_completions=False,
        rollout_batch_size=8,
        group_size=4,
        train_batch_size=8,
        gradient_accumulation_steps=2,
        max_completion_length=16,
        max_steps=1,
        stop_string="e",
        max_grad_norm=1e9,  # never clips, still logs the norm: captured gradients are the raw ones
        seed=0,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return MathGRPOConfig(**settings)


class Recorder(TrainerCallback):
    """Keeps the accumulated gradients at every optimizer step (after clipping, which never triggers here)."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def run(checkpoint, args, reward=varied_reward, n_prompts=4, **trainer_kwargs):
    """Train with MathGRPOTrainer; return (trainer, rollout batches as scored, gradients per optimizer step)."""
    trainer = MathGRPOTrainer(
        model=str(checkpoint), reward_funcs=[reward], args=args, train_dataset=prompt_dataset(n_prompts), **trainer_kwargs
    )
    rollouts = []
    generate_and_score = trainer._generate_and_score_completions

    def record(inputs):
        output = generate_and_score(inputs)
        rollouts.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in output.items()})
        return output

    trainer._generate_and_score_completions = record
    recorder = Recorder()
    trainer.add_callback(recorder)
    trainer.train()
    return trainer, rollouts, recorder.grads


def rows(rollout):
    """Unpadded (prompt ids, completion ids) of each row of a scored rollout batch."""
    return [
        (p[pm.bool()], c[cm.bool()])
        for p, pm, c, cm in zip(
            rollout["prompt_ids"], rollout["prompt_mask"], rollout["completion_ids"], rollout["completion_mask"]
        )
    ]


def response_log_probs(model, pairs):
    """(batch, max response length) log-probs of each response given its prompt, computed row by row."""
    per_row = []
    for prompt, completion in pairs:
        ids = torch.cat([prompt, completion]).unsqueeze(0)
        log_probs = get_response_log_probs(model, ids[:, :-1], ids[:, 1:])["log_probs"][0, len(prompt) - 1 :]
        per_row.append(log_probs)
    width = max(len(lp) for lp in per_row)
    padded = torch.stack([torch.nn.functional.pad(lp, (0, width - len(lp))) for lp in per_row])
    mask = torch.stack([torch.arange(width) < len(lp) for lp in per_row])
    return padded, mask


def graded_text(tokenizer, ids) -> str:
    """vLLM's text of a completion cut at the one-character stop string "e": the last token, when it completed
    the stop (no EOS ended the completion), keeps its text up to the first "e" only; and the bytes of a character
    the tokens left unfinished are not text yet (decode shows them as U+FFFD; vLLM's detokenizer holds them)."""
    full = tokenizer.decode(ids, skip_special_tokens=True)
    if ids[-1] == tokenizer.eos_token_id:
        return full.rstrip("\ufffd")
    head = tokenizer.decode(ids[:-1], skip_special_tokens=True)
    tail = full[len(head):]
    return head + tail[: tail.index("e") + 1] if "e" in tail else full.rstrip("\ufffd")


def reference_step(checkpoint, tokenizer, rollout, args, reward=varied_reward, old_log_probs=None):
    """The assignment's loss and gradients on the whole rollout batch, from a fresh copy of the initial model."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    pairs = rows(rollout)
    texts = [graded_text(tokenizer, c.tolist()) for _, c in pairs]
    advantages, raw_rewards, _ = compute_group_normalized_rewards(
        lambda response, truth: {"reward": reward([response])[0]},
        texts,
        [None] * len(texts),
        args.group_size,
        args.advantage_eps,
        args.use_std_normalization,
    )
    log_probs, mask = response_log_probs(model, pairs)
    loss, _ = grpo_microbatch_train_step(
        log_probs,
        mask,
        1,
        args.loss_type,
        raw_rewards=raw_rewards.unsqueeze(1),
        advantages=advantages.unsqueeze(1),
        old_log_probs=log_probs.detach() if old_log_probs is None else old_log_probs,
        cliprange=args.cliprange,
        length_normalization=args.length_normalization,
        normalize_constant=args.normalize_constant,
    )
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, advantages, raw_rewards


def assert_same_grads(actual, expected, rtol=1e-4, atol=1e-7):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("use_std", [True, False], ids=["std", "nostd"])
@pytest.mark.parametrize("length_normalization", LENGTH_NORMALIZATIONS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_one_step_equals_the_assignment_functions(
    tiny_checkpoint, tiny_tokenizer, tmp_path, loss_type, length_normalization, use_std
):
    args = tiny_config(
        tmp_path, loss_type=loss_type, length_normalization=length_normalization, use_std_normalization=use_std
    )
    trainer, rollouts, grads = run(tiny_checkpoint, args)
    (rollout,) = rollouts
    assert rollout["completion_ids"].size(0) == args.rollout_batch_size
    lengths = rollout["completion_mask"].sum(dim=1)
    assert lengths.min() < lengths.max(), "the test needs responses of different lengths"
    loss, expected_grads, advantages, raw_rewards = reference_step(tiny_checkpoint, tiny_tokenizer, rollout, args)

    torch.testing.assert_close(rollout["advantages"], advantages)
    torch.testing.assert_close(rollout["raw_rewards"], raw_rewards)
    assert advantages.abs().sum() > 0
    assert_same_grads(grads[0], expected_grads)
    (logged,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged["loss"] == pytest.approx(loss, rel=1e-4, abs=1e-7)
    expected_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in expected_grads.values()])).item()
    assert logged["grad_norm"] == pytest.approx(expected_norm, rel=1e-4)
    for key in ("entropy", "reward", "frac_reward_zero_std", "completions/mean_length",
                "completions/mean_length_correct", "completions/mean_length_incorrect"):
        assert key in logged
    if loss_type == "grpo_clip":
        assert logged["clip_fraction"] == 0.0  # on-policy: ratio 1


@pytest.mark.parametrize("length_normalization", LENGTH_NORMALIZATIONS)
def test_update_does_not_depend_on_micro_batching(tiny_checkpoint, tiny_tokenizer, tmp_path, length_normalization):
    results = {}
    for steps in (1, 2, 4):
        args = tiny_config(
            tmp_path / str(steps), gradient_accumulation_steps=steps, length_normalization=length_normalization
        )
        assert args.per_device_train_batch_size == 8 // steps
        _, rollouts, grads = run(tiny_checkpoint, args)
        results[steps] = (rollouts[0], grads[0])
    for steps in (2, 4):
        torch.testing.assert_close(results[steps][0]["completion_ids"], results[1][0]["completion_ids"])
        # float32 sums in another order (other micro-batches, other padding): ~3e-8 apart on gradients up to 0.08
        assert_same_grads(results[steps][1], results[1][1], rtol=1e-5, atol=1e-7)
    _, expected_grads, _, _ = reference_step(tiny_checkpoint, tiny_tokenizer, results[1][0], args)
    assert_same_grads(results[4][1], expected_grads)


def test_off_policy_old_log_probs_are_the_rollout_policys_computed_once(tiny_checkpoint, tiny_tokenizer, tmp_path):
    """Old log-probs without gradient, at the rollout's weights, once per row: the optimizer step in progress at
    generation takes them from its own forwards, the other step from one pass right after generation."""
    # rollout 8, train batch 4, 2 epochs: 2 train steps x 2 epochs = 4 optimizer steps per rollout batch.
    args = tiny_config(
        tmp_path, loss_type="grpo_clip", train_batch_size=4, gradient_accumulation_steps=2,
        epochs_per_rollout_batch=2, max_steps=8, learning_rate=1e-2, cliprange=0.05,
    )
    assert (args.num_iterations, args.steps_per_generation, args.per_device_train_batch_size) == (2, 4, 2)
    trainer = MathGRPOTrainer(model=str(tiny_checkpoint), reward_funcs=[varied_reward], args=args,
                              train_dataset=prompt_dataset())
    calls = {"no_grad": 0, "grad": 0}
    forward = trainer._forward_micro_batch

    def counting(*a, **kw):
        calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1
        return forward(*a, **kw)

    trainer._forward_micro_batch = counting
    rollouts, loss_inputs = [], []
    generate_and_score = trainer._generate_and_score_completions
    trainer._generate_and_score_completions = lambda inputs: rollouts.append(generate_and_score(inputs)) or rollouts[-1]
    compute_loss = trainer._compute_loss
    trainer._compute_loss = lambda model, inputs: loss_inputs.append(inputs) or compute_loss(model, inputs)
    trainer.train()

    assert trainer.state.global_step == 8
    assert len(rollouts) == 2  # 4 optimizer steps per rollout batch
    # Per rollout batch, one pass over the (non-empty) micro-batches of step 2; training forwards skip empty ones.
    assert len(loss_inputs) == 16
    forwarded = [inputs["completion_ids"].size(0) > 0 for inputs in loss_inputs]
    assert calls == {"no_grad": sum(forwarded[2:4]) + sum(forwarded[10:12]), "grad": sum(forwarded)}
    for batch in range(2):  # the second epoch runs the first's micro-batches again, in the same order
        used = loss_inputs[8 * batch : 8 * (batch + 1)]
        assert all(used[4 + k] is used[k] for k in range(4))
    # The first rollout batch's old log-probs are the initial policy's, row by row.
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    with torch.no_grad():
        expected, mask = response_log_probs(model, rows(rollouts[0]))
    reference = {tuple(torch.cat(pair).tolist()): (lp, m) for pair, lp, m in zip(rows(rollouts[0]), expected, mask)}
    checked = 0
    for inputs in loss_inputs[:4]:
        old = inputs["old_per_token_logps"]
        assert not old.requires_grad
        for i in range(inputs["completion_ids"].size(0)):
            length = int(inputs["completion_mask"][i].sum())
            real = inputs["input_ids"][i, : int(inputs["completion_start"][i]) + length]
            log_probs, row_mask = reference[tuple(real.tolist())]
            torch.testing.assert_close(old[i, :length], log_probs[row_mask], rtol=1e-4, atol=1e-5)
            checked += 1
    assert checked == 8 - skipped_rows(rollouts[0])
    clip = [entry["clip_fraction"] for entry in trainer.state.log_history if "clip_fraction" in entry]
    assert clip[0] == 0.0 and max(clip) > 0.0  # the policy moves within a rollout batch, and gets clipped


def skipped_rows(rollout) -> int:
    return int((rollout["advantages"] == 0).sum())


def test_validation_spends_no_policy_forward_pass_off_policy(tiny_checkpoint, tmp_path):
    """TRL's evaluation loop computed old log-probs of every validation batch when training needs them
    (off-policy); trl-math's validation only samples and grades."""
    args = tiny_config(tmp_path, loss_type="grpo_clip", train_batch_size=4, epochs_per_rollout_batch=2,
                       eval_strategy="steps", eval_rollout_batches=1, per_device_eval_batch_size=2)
    assert args.eval_steps == 4  # 4 optimizer steps per rollout batch
    trainer = MathGRPOTrainer(model=str(tiny_checkpoint), reward_funcs=[varied_reward], args=args,
                              train_dataset=prompt_dataset(), eval_dataset=prompt_dataset())
    forward_passes = []
    logps = trainer._get_per_token_logps_and_entropies
    trainer._get_per_token_logps_and_entropies = lambda *a, **kw: forward_passes.append(1) or logps(*a, **kw)
    metrics = trainer.evaluate()
    assert forward_passes == [] and metrics["eval_n"] == 4


@pytest.mark.parametrize("length_normalization", LENGTH_NORMALIZATIONS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_equal_rewards_give_zero_advantages_and_no_nan(tiny_checkpoint, tmp_path, loss_type, length_normalization):
    args = tiny_config(tmp_path, loss_type=loss_type, length_normalization=length_normalization,
                       epochs_per_rollout_batch=2, max_steps=2)
    trainer, rollouts, grads = run(tiny_checkpoint, args, reward=constant_reward)
    assert torch.equal(rollouts[0]["advantages"], torch.zeros(8))
    for step_grads in grads:  # all rows skipped (but no_baseline's): zero gradients, not none, for the optimizer
        assert len(step_grads) == len(list(trainer.model.parameters()))
        flat = torch.cat([g.flatten() for g in step_grads.values()])
        assert torch.isfinite(flat).all()
        assert (flat.abs().sum() > 0) == (loss_type == "no_baseline")  # raw rewards of 1 still push
    for entry in trainer.state.log_history:
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in entry.values()), entry
    assert trainer.state.log_history[0]["frac_reward_zero_std"] == 1.0


def fixed_batch(tokenizer, old_shift: float):
    """Four rows, two groups of two; row 2 has no response token (an empty or fully masked completion)."""
    prompt_ids = tokenizer(["What is 1+1?"] * 4, return_tensors="pt")["input_ids"]
    completion_ids = torch.tensor([[5, 9, 11, 40, 7], [23, 3, 0, 0, 0], [0, 0, 0, 0, 0], [8, 8, 2, 19, 0]])
    completion_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    generator = torch.Generator().manual_seed(0)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "raw_rewards": torch.tensor([1.0, 0.0, 0.0, 1.0]),
        "advantages": torch.tensor([0.7, -0.7, -0.7, 0.7]),
        "old_shift": old_shift * torch.randn(4, 5, generator=generator),
    }


@pytest.mark.parametrize("length_normalization", LENGTH_NORMALIZATIONS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_fixed_batch_with_old_log_probs_and_a_masked_row(
    tiny_checkpoint, tiny_tokenizer, tmp_path, loss_type, length_normalization
):
    args = tiny_config(tmp_path, loss_type=loss_type, length_normalization=length_normalization,
                       group_size=2, rollout_batch_size=8, train_batch_size=8, cliprange=0.1)
    assert args.per_device_train_batch_size == 4
    trainer = MathGRPOTrainer(model=str(tiny_checkpoint), reward_funcs=[varied_reward], args=args,
                              train_dataset=prompt_dataset())
    batch = fixed_batch(tiny_tokenizer, old_shift=0.3)
    model = trainer.model
    model.train()
    with torch.no_grad():
        current, _ = response_log_probs(model, rows(batch)[:2] + rows(batch)[3:])
    inputs = {k: v for k, v in batch.items() if k != "old_shift"}
    inputs["old_per_token_logps"] = torch.zeros(4, 5)
    kept = [0, 1, 3]
    inputs["old_per_token_logps"][kept, : current.size(1)] = current
    inputs["old_per_token_logps"] += batch["old_shift"]
    trainer.current_gradient_accumulation_steps = 2  # what TRL's loop sets: this micro-batch is one of two
    model.zero_grad()
    loss = trainer.compute_loss(model, batching.micro_batch(inputs, tiny_tokenizer.pad_token_id, trim=True))
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # Reference: the empty row contributes zero to the batch mean of per-example losses.
    reference = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    pairs = [rows(batch)[i] for i in kept]
    log_probs, mask = response_log_probs(reference, pairs)
    expected, metadata = grpo_microbatch_train_step(
        log_probs, mask, 2 * 4 / 3, loss_type,
        raw_rewards=batch["raw_rewards"][kept].unsqueeze(1),
        advantages=batch["advantages"][kept].unsqueeze(1),
        old_log_probs=inputs["old_per_token_logps"][kept, : log_probs.size(1)],
        cliprange=0.1, length_normalization=length_normalization, normalize_constant=16.0,
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)
    assert_same_grads(grads, {n: p.grad for n, p in reference.named_parameters() if p.grad is not None})
    if loss_type == "grpo_clip":
        assert metadata["clipped"][mask].any()  # the shift is large enough for clipping to matter
        trainer._log_step_totals()  # what training_step does after an optimizer step's last micro-batch
        assert trainer._metrics["train"]["clip_fraction"][-1] == pytest.approx(
            metadata["clipped"][mask].float().mean().item()
        )


def test_lora_trains_a_step(tiny_checkpoint, tmp_path):
    from peft import LoraConfig

    args = tiny_config(tmp_path, learning_rate=1e-2)
    peft_config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer, rollouts, grads = run(tiny_checkpoint, args, peft_config=peft_config)
    assert trainer.state.global_step == 1
    assert grads[0] and all("lora_" in name for name in grads[0])
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: the step moved it
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    merged_names = dict(trainer.model.get_base_model().named_parameters())
    weight = merged_names["model.layers.0.mlp.up_proj.weight"]
    torch.testing.assert_close(weight, base.model.layers[0].mlp.up_proj.weight)


def test_rewards_grade_vllms_text_when_the_stop_string_ends_inside_a_token(qwen_tokenizer, tmp_path):
    """The token completing "</answer>" is ">." here: TRL's decoded text ends "</answer>.", vLLM's text (and the
    course's pipeline) "</answer>". Training rewards must see the latter. (Validation cuts its responses with the
    same rule, under its own sampling, which no rollout setting such as sequence_bias reaches: see
    test_validation_samples_as_the_assignment_evaluates_whatever_the_rollouts_use.)"""
    from trl_math.tiny_models import build_tiny_qwen2

    checkpoint = tmp_path / "qwen-tiny"
    build_tiny_qwen2(qwen_tokenizer, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                     num_hidden_layers=1).save_pretrained(checkpoint)
    qwen_tokenizer.save_pretrained(checkpoint)
    script = qwen_tokenizer(" half </think> <answer> \\frac{1}{2} </answer>. Then more", add_special_tokens=False)["input_ids"]
    closing = next(i for i, token in enumerate(script) if qwen_tokenizer.decode([token]) == ">.")
    # transformers' sequence_bias makes the random model write the script: +100 k for the k-th token after its prefix.
    bias = [[script[: k + 1], 100.0 * (k + 1)] for k in range(len(script))]
    seen = []

    def recording_reward(completions, ground_truth, **kwargs):
        seen.extend(completions)
        return [r1_zero_reward_fn(text, truth)["reward"] for text, truth in zip(completions, ground_truth)]

    problems = Dataset.from_dict({"prompt": ["User: 1/2?\nAssistant: <think>"] * 2, "ground_truth": ["\\frac{1}{2}"] * 2})
    args = tiny_config(tmp_path, rollout_batch_size=4, group_size=2, train_batch_size=4, gradient_accumulation_steps=1,
                       max_completion_length=len(script), stop_string="</answer>",
                       generation_kwargs={"sequence_bias": bias})
    trainer = MathGRPOTrainer(model=str(checkpoint), reward_funcs=[recording_reward], args=args,
                              train_dataset=problems, processing_class=qwen_tokenizer)
    trainer.train()

    graded = " half </think> <answer> \\frac{1}{2} </answer>"
    assert seen == [graded] * 4  # every rollout, cut right after the stop string
    assert r1_zero_reward_fn(graded, "\\frac{1}{2}")["reward"] == 1.0
    assert r1_zero_reward_fn(qwen_tokenizer.decode(script[: closing + 1]), "\\frac{1}{2}")["reward"] == 0.0  # TRL's text
    (train_log,) = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert train_log["reward"] == 1.0
    assert train_log["completions/mean_length"] == closing + 1  # the loss covers the whole ">." token


def test_course_rewards_train_on_the_answer_reward_and_log_the_format_reward(tiny_checkpoint, tmp_path):
    """make_trl_reward_funcs gives [answer, format]: without reward_weights the objective is the answer reward
    alone (the course's), and the format reward is logged with weight 0; explicit weights still win."""
    from trl_math.grading import make_trl_reward_funcs

    trainer = MathGRPOTrainer(model=str(tiny_checkpoint), reward_funcs=make_trl_reward_funcs("r1_zero"),
                              args=tiny_config(tmp_path), train_dataset=prompt_dataset())
    assert trainer.reward_weights.tolist() == [1.0, 0.0]
    assert trainer.reward_func_names == ["r1_zero_answer_reward", "r1_zero_format_reward"]
    custom = MathGRPOTrainer(model=str(tiny_checkpoint), reward_funcs=[varied_reward, constant_reward],
                             args=tiny_config(tmp_path / "custom"), train_dataset=prompt_dataset())
    assert custom.reward_weights.tolist() == [1.0, 1.0]
    explicit = MathGRPOTrainer(model=str(tiny_checkpoint), reward_funcs=make_trl_reward_funcs("r1_zero"),
                               args=tiny_config(tmp_path / "explicit", reward_weights=[1.0, 0.5]),
                               train_dataset=prompt_dataset())
    assert explicit.reward_weights.tolist() == [1.0, 0.5]


def test_validation_samples_as_the_assignment_evaluates_whatever_the_rollouts_use(tiny_checkpoint, tmp_path):
    """Rollouts at temperature 0.5, top_k 3, repetition penalty 1.3, 16 tokens, stop "e": validation still samples
    at the assignment's settings (1024 tokens, temperature 1.0, stop after </answer>), seeded with eval_seed: the
    very responses of trl-math's transformers sampler at those settings, seeded per batch the same way."""
    from trl_math.data import format_prompt, load_prompt_template
    from trl_math.sampling import SamplingConfig, TransformersSampler

    template = load_prompt_template("r1_zero")
    problems = Dataset.from_dict({"prompt": [format_prompt(template, p) for p in PROMPTS],
                                  "ground_truth": ["2", "24", "72", "3"]})
    args = tiny_config(tmp_path, temperature=0.5, top_k=3, repetition_penalty=1.3, max_completion_length=16,
                       per_device_eval_batch_size=2)
    trainer = MathGRPOTrainer(model=str(tiny_checkpoint), reward_funcs=[varied_reward], args=args,
                              train_dataset=prompt_dataset(), eval_dataset=problems)
    metrics = trainer.evaluate()
    run = tmp_path / "out" / "eval" / "eval-step000000"
    records = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sampling"] == {"temperature": 1.0, "top_p": 1.0, "max_tokens": 1024, "min_tokens": 4,
                                   "stop": ["</answer>"], "include_stop_str_in_output": True, "seed": 0}
    assert max(r["response_tokens"] for r in records) > 16 and metrics["eval_mean_response_tokens"] > 16

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    reference = TransformersSampler(model, trainer.processing_class, SamplingConfig(seed=0), batch_size=2)
    expected = [group[0] for group in reference.sample(problems["prompt"])]
    assert [r["response"] for r in records] == [c.text for c in expected]
    assert [r["response_tokens"] for r in records] == [c.num_tokens for c in expected]
    # The rollouts' settings are back in force once validation is done.
    assert trainer.generation_config.max_new_tokens == 16 and trainer.generation_config.temperature == 0.5

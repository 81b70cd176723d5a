"""Length-aware micro-batches (trl_math.batching): training runs on real tokens only and the update stays the
assignment's, for GRPO (every loss type x length normalization x std normalization, on- and off-policy, 1 and 2
processes), SFT and expert iteration.

GRPO runs on scripted rollouts (tests/scripted_grpo.py): mixed prompt lengths, a maximal-length completion, a
group whose advantages are exactly 0, a group of equal rewards 0.3 whose advantages float round-off makes nonzero,
and exact zeros among nonzero advantages. Float64 runs compare at a relative 1e-10 (of each gradient's largest
entry), except the LM head's weight: TRL's fused LM head (which every forward goes through, levers or not)
accumulates that gradient in float32 whatever the model's dtype, so it is compared at 1e-6. The tiny model's LM
head is untied here, so that the input embedding is checked at 1e-10.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

import scripted_grpo
from conftest import REPO_ROOT, free_port
from test_grpo_trainer import response_log_probs, rows
from trl_math import batching
from trl_math.advantages import compute_group_normalized_rewards
from trl_math.losses import LENGTH_NORMALIZATIONS, LOSS_TYPES, grpo_microbatch_train_step

LM_HEAD = "lm_head.weight"


@pytest.fixture(scope="module")
def untied_checkpoint(tmp_path_factory):
    from trl_math.tiny_models import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("untied"), seed=0, tie_word_embeddings=False)


@pytest.fixture(autouse=True)
def _quiet_rollout_func(monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")  # TRL warns that rollout_func is experimental


def assert_relatively_close(actual: dict, expected: dict, rel: float, lm_head_rel: float = 1e-6):
    """Each tensor within `rel` times its largest expected entry (the LM head's weight: `lm_head_rel`)."""
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        scale = value.abs().max().item()
        error = (actual[name] - value).abs().max().item()
        assert error <= (lm_head_rel if name == LM_HEAD else rel) * scale, f"{name}: {error / scale:.2e} relative"


def skippable_count(rollout, loss_type: str) -> int:
    weight = rollout["raw_rewards"] if loss_type == "no_baseline" else rollout["advantages"]
    return int((weight == 0).sum())


# ---------------------------------------------------------------------------------------------- pieces
def test_rotary_positions_from_the_first_token_make_left_padding_exact(untied_checkpoint):
    """Qwen2 (transformers 5) takes position_ids with left padding: positions from the mask give the unpadded row's
    logits bit for bit; the default positions (the column index) shift them through the float32 rotary tables."""
    model = AutoModelForCausalLM.from_pretrained(untied_checkpoint, dtype=torch.float64).eval()
    row = torch.randint(1, 400, (1, 9), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([torch.zeros(1, 7, dtype=torch.long), row], dim=1)
    mask = (torch.arange(16) >= 7).long().unsqueeze(0)
    with torch.no_grad():
        alone = model(row).logits[0]
        shifted = model(padded, attention_mask=mask).logits[0, 7:]
        from_mask = model(padded, attention_mask=mask, position_ids=batching.position_ids(mask)).logits[0, 7:]
    assert torch.equal(from_mask, alone)
    assert not torch.equal(shifted, alone)


def test_trimmed_layout_holds_each_row_from_column_0():
    rows_ = {
        "prompt_ids": torch.tensor([[0, 0, 5, 6], [7, 8, 9, 1]]),
        "prompt_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
        "completion_ids": torch.tensor([[2, 3, 4], [3, 0, 0]]),
        "completion_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
        "old_per_token_logps": torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]]),
        "advantages": torch.tensor([1.0, 2.0]),
    }
    batch = batching.micro_batch(rows_, pad_token_id=0, trim=True)
    assert batch["input_ids"].tolist() == [[5, 6, 2, 3, 4], [7, 8, 9, 1, 3]]
    assert batch["attention_mask"] is None and batch["position_ids"].tolist() == [[0, 1, 2, 3, 4]] * 2
    assert batch["labels"].tolist() == [[-100, -100, 2, 3, 4], [-100, -100, -100, -100, 3]]
    assert batch["completion_start"].tolist() == [2, 4]
    assert torch.equal(batch["old_per_token_logps"], rows_["old_per_token_logps"])  # 3 columns: row 0 needs them
    per_position = torch.arange(8.0).reshape(2, 4)  # a fused head's output: column j belongs to the token in j + 1
    assert batching.completion_values(per_position, batch).tolist() == [[1, 2, 3], [7, 0, 0]]
    untrimmed = batching.micro_batch(rows_, pad_token_id=0, trim=False)
    assert untrimmed["position_ids"].tolist() == [[0, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]]


def test_only_exact_zeros_are_skipped():
    equal = torch.full((8,), 0.3)  # float round-off: tiny nonzero advantages
    from trl_math.advantages import normalize_group_rewards

    advantages = normalize_group_rewards(torch.cat([equal, torch.ones(8)]), 8, 1e-6, True)
    assert (advantages[:8] != 0).all() and (advantages[8:] == 0).all()
    mask = torch.ones(16, 3, dtype=torch.long)
    mask[0] = 0  # no loss token
    rows_ = {"advantages": advantages, "raw_rewards": torch.cat([equal, torch.ones(8)]), "completion_mask": mask}
    assert batching.zero_gradient_rows("grpo_clip", rows_).tolist() == [True] + [False] * 7 + [True] * 8
    assert batching.zero_gradient_rows("no_baseline", rows_).tolist() == [True] + [False] * 15


# ------------------------------------------------------------------------------------------ GRPO, one step
@pytest.mark.parametrize("use_std", [True, False], ids=["std", "nostd"])
@pytest.mark.parametrize("length_normalization", LENGTH_NORMALIZATIONS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_levers_leave_the_step_unchanged_and_equal_to_the_assignment(
    untied_checkpoint, tmp_path, loss_type, length_normalization, use_std
):
    options = dict(loss_type=loss_type, length_normalization=length_normalization, use_std_normalization=use_std)
    on, rollouts, (grads_on,), rows_on = scripted_grpo.train(untied_checkpoint, tmp_path / "on", **options)
    off, _, (grads_off,), rows_off = scripted_grpo.train(untied_checkpoint, tmp_path / "off", levers=batching.NONE,
                                                          **options)
    assert_relatively_close(grads_on, grads_off, rel=1e-10)
    (rollout,) = rollouts
    skipped = skippable_count(rollout, loss_type)
    assert skipped >= 6 and rows_off == [4] * 8 and sum(rows_on) == 32 - skipped
    assert rows_on == sorted(rows_on, reverse=True) and rows_on[-1] == 0  # kept rows first: empty micro-batches last
    (logged,) = [entry for entry in on.state.log_history if "loss" in entry]
    assert logged["skipped_rows"] == skipped
    assert [entry for entry in off.state.log_history if "loss" in entry][0]["skipped_rows"] == 0

    # The assignment's functions on the unpadded rows, all at once, from a fresh float64 copy of the model
    reward_of = {tuple(c.token_ids): c.reward for group in scripted_grpo.scripted_groups(on.processing_class).values()
                 for c in group}
    scripted = [reward_of[tuple(completion.tolist())] for _, completion in rows(rollout)]
    advantages, raw_rewards, _ = compute_group_normalized_rewards(
        lambda response, reward: {"reward": reward}, [""] * 32, scripted, 8, 1e-6, use_std)
    assert torch.equal(rollout["raw_rewards"], raw_rewards) and torch.equal(rollout["advantages"], advantages)
    model = AutoModelForCausalLM.from_pretrained(untied_checkpoint, dtype=torch.float64)
    log_probs, mask = response_log_probs(model, rows(rollout))
    grpo_microbatch_train_step(log_probs, mask, 1, loss_type, raw_rewards.unsqueeze(1), advantages.unsqueeze(1),
                               log_probs.detach(), 0.2, length_normalization, 16.0)
    reference = {n: p.grad for n, p in model.named_parameters()}
    assert_relatively_close(grads_on, reference, rel=1e-6)  # TRL's fused head: float32 log-probs


def test_levers_in_float32(tiny_checkpoint, tmp_path):
    _, _, (grads_on,), _ = scripted_grpo.train(tiny_checkpoint, tmp_path / "on", dtype=torch.float32)
    _, _, (grads_off,), _ = scripted_grpo.train(tiny_checkpoint, tmp_path / "off", levers=batching.NONE,
                                                dtype=torch.float32)
    assert_relatively_close(grads_on, grads_off, rel=1e-5, lm_head_rel=1e-5)


class CountPositions(TrainerCallback):
    """Decoder positions of the training forwards (a forward pre-hook on the decoder; no-grad passes not counted)."""

    def __init__(self):
        self.positions = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.model.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs):
        if torch.is_grad_enabled():
            self.positions += kwargs["input_ids"].numel()


def test_one_step_forwards_real_tokens_only(untied_checkpoint, tmp_path):
    """The positions of the optimizer step's training forwards are the kept rows' real lengths plus the grouping's
    slack (rows of a micro-batch padded to its longest: at most (size - 1) x the spread of the lengths, as rows go
    longest first); far below TRL's. (One plain process: empty micro-batches forward nothing.)"""
    counted = {}
    for name, levers in (("on", batching.ALL), ("off", batching.NONE)):
        counter = CountPositions()
        _, (rollout,), _, _ = scripted_grpo.train(untied_checkpoint, tmp_path / name, levers=levers,
                                                  callbacks=[counter])
        counted[name] = counter.positions
    keep = rollout["advantages"] != 0
    lengths = (rollout["prompt_mask"].sum(dim=1) + rollout["completion_mask"].sum(dim=1))[keep]
    real, slack = int(lengths.sum()), 3 * int(lengths.max() - lengths.min())
    assert real <= counted["on"] <= real + slack
    width = rollout["prompt_ids"].size(1) + rollout["completion_ids"].size(1)
    assert counted["off"] == 32 * width
    assert counted["on"] < 0.5 * counted["off"]


def test_training_metrics_cost_one_collective_per_optimizer_step(untied_checkpoint, tmp_path, monkeypatch):
    """Two optimizer steps of 8 micro-batches: two all-reduces of the metrics (no host sync per micro-batch)."""
    from accelerate import Accelerator

    reduce, calls = Accelerator.reduce, []
    monkeypatch.setattr(Accelerator, "reduce", lambda self, *a, **kw: calls.append(1) or reduce(self, *a, **kw))
    trainer, _, grads, _ = scripted_grpo.train(untied_checkpoint, tmp_path, loss_type="grpo_clip", max_steps=2)
    assert len(grads) == 2 and len(calls) == 2
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all({"entropy", "clip_fraction", "ratio/mean", "skipped_rows"} <= entry.keys() for entry in logged)


# ------------------------------------------------------------------------------------------ GRPO, off-policy
def test_off_policy_epochs_with_clipping_end_at_the_same_weights(untied_checkpoint, tmp_path):
    """grpo_clip, 2 epochs over rollout batches of 2 optimizer steps each, 8 steps. Plain SGD (AdamW would turn the
    float noise of gradients that are mathematically zero into learning-rate-sized steps), the LM head frozen (its
    float32 weight gradient would carry float32 rounding into every later step: module doc)."""
    options = dict(loss_type="grpo_clip", train_batch_size=16, gradient_accumulation_steps=4,
                   epochs_per_rollout_batch=2, max_steps=8, cliprange=0.05, optimizer_lr=0.5, freeze_lm_head=True)
    on, rollouts, _, _ = scripted_grpo.train(untied_checkpoint, tmp_path / "on", **options)
    off, _, _, _ = scripted_grpo.train(untied_checkpoint, tmp_path / "off", levers=batching.NONE, **options)
    assert len(rollouts) == 2 and on.state.global_step == 8
    clip = [entry["clip_fraction"] for entry in on.state.log_history if "clip_fraction" in entry]
    assert clip[0] == 0.0 and max(clip) > 0.0  # ratio 1 at the rollout's weights; the policy moves and gets clipped
    weights_on, weights_off = dict(on.model.named_parameters()), dict(off.model.named_parameters())
    start = dict(AutoModelForCausalLM.from_pretrained(untied_checkpoint, dtype=torch.float64).named_parameters())
    trained = [name for name in start if name != LM_HEAD]
    moved = {name: weights_on[name].detach() - start[name] for name in trained}
    assert_relatively_close(moved, {name: weights_off[name].detach() - start[name] for name in trained}, rel=1e-10)


# ----------------------------------------------------------------------------------------- GRPO, 2 processes
@pytest.mark.slow
def test_two_processes_equal_one_when_a_process_skips_every_row(untied_checkpoint, tmp_path):
    """Two gloo processes, each holding one group of a rollout batch of 16: every step, the group of rewards 1 leaves
    its process nothing to forward (two empty micro-batches: zero-weighted placeholder forwards, then DDP's
    all-reduce). The all-reduced gradients equal one process's, levers off, on the same rollouts."""
    overrides = dict(rollout_batch_size=16, train_batch_size=16, gradient_accumulation_steps=2, max_steps=2,
                     optimizer_lr=0.5, freeze_lm_head=True)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), str(REPO_ROOT / "tests" / "scripted_grpo.py"), str(untied_checkpoint), str(tmp_path / "two"),
               json.dumps(overrides)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    ranks = [torch.load(tmp_path / f"two.rank{k}.pt") for k in range(2)]

    _, _, grads, rows_one = scripted_grpo.train(untied_checkpoint, tmp_path / "one", scripted_grpo.TWO_GROUPS,
                                                levers=batching.NONE, **overrides)
    assert rows_one == [8] * 4  # one process, levers off: 2 steps x 2 micro-batches of 8
    for step in range(2):
        step_rows = sorted(rank["rows"][2 * step : 2 * step + 2] for rank in ranks)
        assert step_rows == [[0, 0], [4, 0]]  # one process forwards nothing; the other its 4 nonzero advantages
        assert_relatively_close(ranks[0]["grads"][step], grads[step], rel=1e-10)


# ------------------------------------------------------------------------------------------------ SFT and EI
def test_sft_grouping_leaves_the_gradients_unchanged(untied_checkpoint, tmp_path):
    """8 examples of three response lengths, 2 optimizer steps of 2 micro-batches of 2, learning rate 0: the
    gradients of both steps are the same with grouping on and off, for fewer positions."""
    from test_sft_trainer import config, sft_rows
    from trl_math.sft_trainer import MathSFTTrainer

    results = {}
    for grouping in (True, False):
        model = AutoModelForCausalLM.from_pretrained(untied_checkpoint, dtype=torch.float64)
        capture, counter = scripted_grpo.Capture(), CountPositions()
        args = config(tmp_path / str(grouping), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                      max_steps=2, max_grad_norm=0.0, length_aware_batching=grouping)
        trainer = MathSFTTrainer(model, args=args, train_dataset=Dataset.from_list(sft_rows(8)),
                                 processing_class=AutoTokenizer.from_pretrained(untied_checkpoint),
                                 optimizers=(torch.optim.SGD(model.parameters(), lr=0.0), None),
                                 callbacks=[capture, counter])
        trainer.train()
        results[grouping] = capture.grads, counter.positions
    (grads_on, positions_on), (grads_off, positions_off) = results[True], results[False]
    for step in range(2):
        assert_relatively_close(grads_on[step], grads_off[step], rel=1e-10)
    assert positions_on < positions_off


def test_expert_iteration_groups_its_sft_phase_with_the_same_result(untied_checkpoint, tmp_path):
    """One EI step (16 rollouts cut at "e", the even-length ones kept), its SFT phase with grouping on and off:
    the same weights (SGD; LM head frozen, module doc), for fewer positions."""
    from scripted_rewards import even_length_reward
    from trl_math.data import format_prompt, load_prompt_template
    from trl_math.expert_iteration import ExpertIterationConfig, ExpertIterationTrainer
    from trl_math.synthetic import make_arithmetic_splits

    template = load_prompt_template("r1_zero")
    questions = Dataset.from_list([{"prompt": format_prompt(template, r["problem"]), "ground_truth": r["answer"]}
                                   for r in make_arithmetic_splits(11, {"train": 6})["train"]])
    results = {}
    for grouping in (True, False):
        model = AutoModelForCausalLM.from_pretrained(untied_checkpoint, dtype=torch.float64)
        model.lm_head.weight.requires_grad_(False)
        positions = []
        model.model.register_forward_pre_hook(
            lambda module, args, kwargs: positions.append(kwargs["input_ids"].numel()) if torch.is_grad_enabled()
            else None, with_kwargs=True)
        args = ExpertIterationConfig(
            output_dir=str(tmp_path / str(grouping)), n_ei_steps=1, questions_per_step=4, rollouts_per_question=4,
            rollout_max_tokens=8, eval_stop="e", entropy_sample_size=0, per_device_train_batch_size=2,
            gradient_accumulation_steps=2, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, seed=5, use_cpu=True,
            bf16=False, report_to="none", logging_steps=1, length_aware_batching=grouping)
        trainer = ExpertIterationTrainer(model, args, questions, processing_class=AutoTokenizer.from_pretrained(
            untied_checkpoint), reward_fn=even_length_reward)
        (record,) = trainer.train()
        results[grouping] = dict(trainer.model.named_parameters()), sum(positions), record["ei/kept"]
    (weights_on, positions_on, kept), (weights_off, positions_off, _) = results[True], results[False]
    assert kept >= 4  # an optimizer step of two micro-batches of 2: something to regroup
    start = dict(AutoModelForCausalLM.from_pretrained(untied_checkpoint, dtype=torch.float64).named_parameters())
    trained = [name for name in start if name != LM_HEAD]
    assert_relatively_close({n: weights_on[n].detach() - start[n] for n in trained},
                            {n: weights_off[n].detach() - start[n] for n in trained}, rel=1e-10)
    assert positions_on < positions_off

"""trl_math's loss primitives against the stored reference fixtures (tests/fixtures/regenerate.py)."""

from __future__ import annotations

import pytest
import torch

import trl_math
from conftest import FIXTURES_DIR

LOSS_TYPES = ("no_baseline", "reinforce_with_baseline", "grpo_clip", "grpo_no_clip")


@pytest.fixture(scope="module")
def cases():
    return torch.load(FIXTURES_DIR / "reference_cases.pt", weights_only=False)


def close(actual, expected, tol=1e-10):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("dim", [None, 0, 1, -1])
def test_masked_mean_and_normalize(cases, dim):
    c = cases["masked"]
    close(trl_math.masked_mean(c["tensor"], c["mask"], dim), c["results"][("mean", dim)])
    close(trl_math.masked_normalize(c["tensor"], c["mask"], c["constant"], dim), c["results"][("normalize", dim)])


def test_masked_mean_of_fully_masked_row_is_nan_like_the_formula():
    tensor = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[True, False], [False, False]])
    out = trl_math.masked_mean(tensor, mask, dim=1)
    assert out[0].item() == 1.0 and torch.isnan(out[1])


def test_compute_entropy_is_stable_on_large_logits(cases):
    c = cases["entropy"]
    for dtype in (torch.float32, torch.float64):
        out = trl_math.compute_entropy(c["logits"].to(dtype))
        assert torch.isfinite(out).all()
        close(out, c["entropy"], tol=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("by_std", [True, False])
def test_compute_group_normalized_rewards(cases, by_std):
    c = cases["group"]
    table = dict(zip(c["responses"], c["rewards"]))
    seen = []

    def reward_fn(response, truth):
        seen.append((response, truth))
        return {"reward": table[response], "format_reward": 1.0, "answer_reward": table[response]}

    adv, raw, meta = trl_math.compute_group_normalized_rewards(
        reward_fn, c["responses"], c["truths"], c["group_size"], c["eps"], by_std
    )
    assert seen == list(zip(c["responses"], c["truths"]))
    assert adv.shape == raw.shape == (len(c["rewards"]),)
    close(raw, torch.tensor(c["rewards"]), tol=0)
    close(adv, c["results"][by_std], tol=1e-6)
    assert meta["reward_mean"] == pytest.approx(sum(c["rewards"]) / len(c["rewards"]))
    assert meta["frac_groups_zero_std"] == pytest.approx(0.25)  # the second group is all 1


def test_group_size_must_divide_the_rollouts():
    with pytest.raises(ValueError, match="group_size=3"):
        trl_math.normalize_group_rewards(torch.zeros(8), 3, 1e-6, True)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("cliprange", [0.2, 10.0])
def test_policy_gradient_losses(cases, loss_type, cliprange):
    c = cases["pg"]
    expected = c["results"][(loss_type, cliprange)]
    loss, meta = trl_math.compute_policy_gradient_loss(
        c["logp"], loss_type, raw_rewards=c["raw"], advantages=c["adv"], old_log_probs=c["old"], cliprange=cliprange
    )
    close(loss, expected["loss"])
    if loss_type == "grpo_clip":
        assert torch.equal(meta["clipped"], expected["clipped"])
        direct, _ = trl_math.compute_grpo_clip_loss(c["adv"], c["logp"], c["old"], cliprange)
        close(direct, expected["loss"])
    if loss_type == "no_baseline":
        close(trl_math.compute_naive_policy_gradient_loss(c["raw"], c["logp"]), expected["loss"])
    if loss_type == "grpo_no_clip":
        close(trl_math.compute_grpo_no_clip_loss(c["adv"], c["logp"], c["old"])[0], expected["loss"])


def test_large_cliprange_never_clips_and_small_one_does(cases):
    c = cases["pg"]
    assert not cases["pg"]["results"][("grpo_clip", 10.0)]["clipped"].any()
    _, meta = trl_math.compute_grpo_clip_loss(c["adv"], c["logp"], c["old"], 0.2)
    assert meta["clipped"].any()


@pytest.mark.parametrize(
    "loss_type, missing, kwargs",
    [
        ("no_baseline", "raw_rewards", {}),
        ("reinforce_with_baseline", "advantages", {}),
        ("grpo_clip", "old_log_probs", {"advantages": torch.ones(2, 1), "cliprange": 0.2}),
        ("grpo_clip", "cliprange", {"advantages": torch.ones(2, 1), "old_log_probs": torch.zeros(2, 3)}),
        ("grpo_no_clip", "old_log_probs", {"advantages": torch.ones(2, 1)}),
    ],
)
def test_missing_arguments_are_named(loss_type, missing, kwargs):
    with pytest.raises(ValueError, match=missing):
        trl_math.compute_policy_gradient_loss(torch.zeros(2, 3), loss_type, **kwargs)


def test_unknown_loss_type_is_rejected():
    with pytest.raises(ValueError, match="grpo_clip"):
        trl_math.compute_policy_gradient_loss(torch.zeros(2, 3), "ppo", advantages=torch.ones(2, 1))


def _log_probs(param, scale):
    return -torch.nn.functional.softplus(param * scale)


@pytest.mark.parametrize("steps", [1, 10])
@pytest.mark.parametrize("constant", [1.0, 42.0])
def test_sft_microbatch_train_step(cases, steps, constant):
    c = cases[("sft", steps)]
    expected = c["results"][constant]
    param = c["theta"].clone().requires_grad_(True)
    losses = []
    for scale, mask in zip(c["scales"], c["masks"]):
        loss, _ = trl_math.sft_microbatch_train_step(_log_probs(param, scale), mask, steps, constant)
        losses.append(loss.detach())
    close(torch.stack(losses), expected["losses"])
    close(param.grad, expected["grad"])


@pytest.mark.parametrize("steps", [1, 10])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("norm", ["masked_mean", "masked_normalize"])
def test_grpo_microbatch_train_step(cases, steps, loss_type, norm):
    c = cases[("grpo", steps)]
    expected = c["results"][(loss_type, norm)]
    param = c["theta"].clone().requires_grad_(True)
    extra = {} if norm == "masked_mean" else {"length_normalization": norm, "normalize_constant": expected["constant"]}
    losses = []
    for scale, mask, old, raw, adv in zip(c["scales"], c["masks"], c["olds"], c["raws"], c["advs"]):
        loss, _ = trl_math.grpo_microbatch_train_step(
            _log_probs(param, scale), mask, steps, loss_type,
            raw_rewards=raw, advantages=adv, old_log_probs=old, cliprange=0.2, **extra,
        )
        losses.append(loss.detach())
    close(torch.stack(losses), expected["losses"])
    close(param.grad, expected["grad"])


def test_masked_normalize_length_normalization_needs_a_constant():
    with pytest.raises(ValueError, match="normalize_constant"):
        trl_math.aggregate_per_token_loss(torch.ones(2, 3), torch.ones(2, 3), "masked_normalize")

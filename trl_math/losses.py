"""The assignment's loss primitives: masked reductions, policy-gradient losses, microbatch steps.

Every function here has exactly the semantics of CS336 Assignment 5 (Spring 2025), so that users can
plug them into the course's own test adapters. The trainers of trl_math build their losses from these
functions and nothing else.
"""

from __future__ import annotations

from typing import Literal

import torch

LossType = Literal["no_baseline", "reinforce_with_baseline", "grpo_clip", "grpo_no_clip"]
LOSS_TYPES: tuple[str, ...] = ("no_baseline", "reinforce_with_baseline", "grpo_clip", "grpo_no_clip")
LengthNormalization = Literal["masked_mean", "masked_normalize"]
LENGTH_NORMALIZATIONS: tuple[str, ...] = ("masked_mean", "masked_normalize")


def masked_normalize(
    tensor: torch.Tensor,
    mask: torch.Tensor,
    normalize_constant: float,
    dim: int | None = None,
) -> torch.Tensor:
    """Sum of the elements where `mask` is 1, over `dim` (all if None), divided by `normalize_constant`."""
    masked = tensor * mask.to(tensor.dtype)
    total = masked.sum() if dim is None else masked.sum(dim=dim)
    return total / normalize_constant


def masked_mean(tensor: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of the elements where `mask` is 1, over `dim` (all if None).

    A slice without any unmasked element gives nan (0/0), as the formula does: callers must not
    feed such rows (the trainers guarantee at least one response token per row).
    """
    mask = mask.to(tensor.dtype)
    if dim is None:
        return (tensor * mask).sum() / mask.sum()
    return (tensor * mask).sum(dim=dim) / mask.sum(dim=dim)


def sft_microbatch_train_step(
    policy_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    gradient_accumulation_steps: int,
    normalize_constant: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SFT forward-backward on one microbatch.

    loss = mean over the batch of (-sum of response-token log-probs / normalize_constant), divided by
    gradient_accumulation_steps. Calls backward() and returns the (scaled) loss for logging.
    """
    per_example_nll = -masked_normalize(policy_log_probs, response_mask, normalize_constant, dim=-1)
    loss = per_example_nll.mean() / gradient_accumulation_steps
    loss.backward()
    metadata = {
        "per_example_nll": per_example_nll.detach(),
        "num_response_tokens": response_mask.sum().detach(),
    }
    return loss, metadata


def compute_naive_policy_gradient_loss(
    raw_rewards_or_advantages: torch.Tensor,
    policy_log_probs: torch.Tensor,
) -> torch.Tensor:
    """Per-token REINFORCE loss -A * log p, A of shape (batch, 1) broadcast over the sequence."""
    return -raw_rewards_or_advantages * policy_log_probs


def compute_grpo_clip_loss(
    advantages: torch.Tensor,
    policy_log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token GRPO-Clip loss -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A).

    metadata["clipped"] is True where the clipped term is the smaller one (the min picked the RHS).
    """
    ratio = torch.exp(policy_log_probs - old_log_probs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, {"clipped": clipped < unclipped, "ratio": ratio.detach()}


def compute_grpo_no_clip_loss(
    advantages: torch.Tensor,
    policy_log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token unclipped importance-weighted loss -ratio * A (the assignment's "GRPO-No-Clip")."""
    ratio = torch.exp(policy_log_probs - old_log_probs)
    return -ratio * advantages, {"ratio": ratio.detach()}


def compute_policy_gradient_loss(
    policy_log_probs: torch.Tensor,
    loss_type: LossType,
    raw_rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    cliprange: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dispatch to the per-token loss of `loss_type`; returns (per-token loss, metadata)."""

    def require(name: str, value):
        if value is None:
            raise ValueError(f"loss_type={loss_type!r} requires `{name}`, which was None")
        return value

    if loss_type == "no_baseline":
        return compute_naive_policy_gradient_loss(require("raw_rewards", raw_rewards), policy_log_probs), {}
    if loss_type == "reinforce_with_baseline":
        return compute_naive_policy_gradient_loss(require("advantages", advantages), policy_log_probs), {}
    if loss_type == "grpo_clip":
        return compute_grpo_clip_loss(
            require("advantages", advantages),
            policy_log_probs,
            require("old_log_probs", old_log_probs),
            require("cliprange", cliprange),
        )
    if loss_type == "grpo_no_clip":
        return compute_grpo_no_clip_loss(
            require("advantages", advantages), policy_log_probs, require("old_log_probs", old_log_probs)
        )
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")


def aggregate_per_token_loss(
    per_token_loss: torch.Tensor,
    response_mask: torch.Tensor,
    length_normalization: LengthNormalization = "masked_mean",
    normalize_constant: float | None = None,
) -> torch.Tensor:
    """Per-token loss -> scalar: per-example masked_mean (or masked_normalize by a constant), batch mean."""
    if length_normalization == "masked_mean":
        per_example = masked_mean(per_token_loss, response_mask, dim=-1)
    elif length_normalization == "masked_normalize":
        if normalize_constant is None:
            raise ValueError("length_normalization='masked_normalize' requires `normalize_constant`")
        per_example = masked_normalize(per_token_loss, response_mask, normalize_constant, dim=-1)
    else:
        raise ValueError(
            f"unknown length_normalization {length_normalization!r}; expected one of {LENGTH_NORMALIZATIONS}"
        )
    return per_example.mean()


def grpo_microbatch_train_step(
    policy_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    gradient_accumulation_steps: int,
    loss_type: LossType,
    raw_rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    cliprange: float | None = None,
    length_normalization: LengthNormalization = "masked_mean",
    normalize_constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO forward-backward on one microbatch.

    Per-token loss from `compute_policy_gradient_loss`, reduced per example by masked_mean over the
    sequence (the assignment's default) or by masked_normalize with `normalize_constant` (the length
    normalization ablation), averaged over the batch, divided by gradient_accumulation_steps.
    Calls backward() and returns the (scaled) loss for logging.
    """
    per_token_loss, metadata = compute_policy_gradient_loss(
        policy_log_probs, loss_type, raw_rewards, advantages, old_log_probs, cliprange
    )
    loss = aggregate_per_token_loss(per_token_loss, response_mask, length_normalization, normalize_constant)
    loss = loss / gradient_accumulation_steps
    loss.backward()
    return loss, metadata

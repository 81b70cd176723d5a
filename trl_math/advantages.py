"""Group-normalized advantages (GRPO's baseline), as the assignment defines them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def normalize_group_rewards(
    raw_rewards: torch.Tensor, group_size: int, advantage_eps: float, normalize_by_std: bool
) -> torch.Tensor:
    """(r - group mean) / (group std + eps) with torch's unbiased std, or r - group mean.

    `raw_rewards` is flat, (n_groups * group_size,), with the members of a group contiguous.
    """
    if group_size < 1 or raw_rewards.numel() % group_size != 0:
        raise ValueError(
            f"{raw_rewards.numel()} rewards cannot be cut into whole groups of group_size={group_size}"
        )
    grouped = raw_rewards.reshape(-1, group_size)
    centered = grouped - grouped.mean(dim=-1, keepdim=True)
    if normalize_by_std:
        centered = centered / (grouped.std(dim=-1, keepdim=True) + advantage_eps)
    return centered.reshape(-1)


def compute_group_normalized_rewards(
    reward_fn: Callable[[str, str], dict[str, float]],
    rollout_responses: Sequence[str],
    repeated_ground_truths: Sequence,
    group_size: int,
    advantage_eps: float,
    normalize_by_std: bool,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Score each rollout with `reward_fn`, then normalize within groups of `group_size`.

    Returns (advantages (N,), raw_rewards (N,), metadata) where metadata holds reward statistics
    (mean / std / min / max of the reward, mean format and answer rewards, and the fraction of groups
    whose rewards are all equal, which carry no learning signal).
    """
    if len(rollout_responses) != len(repeated_ground_truths):
        raise ValueError(
            f"got {len(rollout_responses)} responses but {len(repeated_ground_truths)} ground truths"
        )
    scores = [reward_fn(response, truth) for response, truth in zip(rollout_responses, repeated_ground_truths)]
    raw_rewards = torch.tensor([float(s["reward"]) for s in scores], dtype=torch.float32)
    advantages = normalize_group_rewards(raw_rewards, group_size, advantage_eps, normalize_by_std)
    grouped = raw_rewards.reshape(-1, group_size)
    metadata = {
        "reward_mean": raw_rewards.mean().item(),
        "reward_std": raw_rewards.std().item() if raw_rewards.numel() > 1 else 0.0,
        "reward_min": raw_rewards.min().item(),
        "reward_max": raw_rewards.max().item(),
        "format_reward_mean": sum(float(s.get("format_reward", 0.0)) for s in scores) / len(scores),
        "answer_reward_mean": sum(float(s.get("answer_reward", 0.0)) for s in scores) / len(scores),
        "frac_groups_zero_std": (grouped.max(dim=-1).values == grouped.min(dim=-1).values).float().mean().item(),
    }
    return advantages, raw_rewards, metadata

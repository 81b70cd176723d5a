"""trl-math: CS336 Assignment 5 (SFT, expert iteration, GRPO on MATH) as a plugin for Hugging Face TRL."""

from .advantages import compute_group_normalized_rewards, normalize_group_rewards
from .logprobs import compute_entropy, get_response_log_probs, tokenize_prompt_and_output
from .losses import (
    LENGTH_NORMALIZATIONS,
    LOSS_TYPES,
    aggregate_per_token_loss,
    compute_grpo_clip_loss,
    compute_grpo_no_clip_loss,
    compute_naive_policy_gradient_loss,
    compute_policy_gradient_loss,
    grpo_microbatch_train_step,
    masked_mean,
    masked_normalize,
    sft_microbatch_train_step,
)

__version__ = "0.1.0"

__all__ = [
    "LENGTH_NORMALIZATIONS",
    "LOSS_TYPES",
    "aggregate_per_token_loss",
    "compute_entropy",
    "compute_group_normalized_rewards",
    "compute_grpo_clip_loss",
    "compute_grpo_no_clip_loss",
    "compute_naive_policy_gradient_loss",
    "compute_policy_gradient_loss",
    "get_response_log_probs",
    "grpo_microbatch_train_step",
    "masked_mean",
    "masked_normalize",
    "normalize_group_rewards",
    "sft_microbatch_train_step",
    "tokenize_prompt_and_output",
]

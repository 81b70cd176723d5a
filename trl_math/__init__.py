"""trl-math: CS336 Assignment 5 (SFT, expert iteration, GRPO on MATH) as a plugin for Hugging Face TRL."""

from .advantages import compute_group_normalized_rewards, normalize_group_rewards
from .grading import (
    GRADING_MODES,
    GradingPool,
    TRLReward,
    accurate_reward_fn,
    grade_answer,
    grade_batch,
    make_trl_reward_funcs,
    question_only_answer_reward,
    question_only_reward_fn,
    r1_zero_answer_reward,
    r1_zero_format_reward,
    r1_zero_reward_fn,
)
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
    "GRADING_MODES",
    "LENGTH_NORMALIZATIONS",
    "LOSS_TYPES",
    "accurate_reward_fn",
    "aggregate_per_token_loss",
    "compute_entropy",
    "compute_group_normalized_rewards",
    "compute_grpo_clip_loss",
    "compute_grpo_no_clip_loss",
    "compute_naive_policy_gradient_loss",
    "compute_policy_gradient_loss",
    "get_response_log_probs",
    "grade_answer",
    "grade_batch",
    "GradingPool",
    "grpo_microbatch_train_step",
    "make_trl_reward_funcs",
    "masked_mean",
    "masked_normalize",
    "normalize_group_rewards",
    "question_only_answer_reward",
    "question_only_reward_fn",
    "r1_zero_answer_reward",
    "r1_zero_format_reward",
    "r1_zero_reward_fn",
    "sft_microbatch_train_step",
    "tokenize_prompt_and_output",
    "TRLReward",
]

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

# Trainers, configs and evaluation import trl and transformers: loaded on first use, so that light users
# (the grading pool's worker processes, the course's test adapters) do not pay for them.
_LAZY = {
    "MathGRPOConfig": "grpo_config",
    "MathGRPOTrainer": "grpo_trainer",
    "WallClockBudgetCallback": "callbacks",
    "MalformedRowError": "data",
    "PROMPT_NAMES": "data",
    "format_prompt": "data",
    "load_prompt_template": "data",
    "evaluate": "evaluation",
    "evaluate_vllm": "evaluation",
    "Sampler": "sampling",
    "SamplingConfig": "sampling",
    "TransformersSampler": "sampling",
    "VLLMSampler": "sampling",
    "load_sampler": "sampling",
    "ExpertIterationConfig": "expert_iteration",
    "ExpertIterationTrainer": "expert_iteration",
    "LogGenerationsCallback": "generation_log",
    "log_generations": "generation_log",
    "MathDataArguments": "data",
    "load_math_problems": "data",
    "MathSFTConfig": "sft_config",
    "MathSFTTrainer": "sft_trainer",
    "SFTCollator": "sft_data",
    "load_sft_examples": "sft_data",
    "MetricsLogCallback": "run_log",
    "plot_runs": "plotting",
    # The supplement (Instruction Tuning and RLHF)
    "parse_mmlu_response": "supplement.parsers",
    "parse_gsm8k_response": "supplement.parsers",
    "load_benchmark": "supplement.benchmarks",
    "ZeroShotArguments": "supplement.zero_shot",
    "ZeroShotSamplingConfig": "supplement.zero_shot",
    "evaluate_zero_shot": "supplement.zero_shot",
    "run_zero_shot": "supplement.zero_shot",
    "InstructionDataArguments": "supplement.instruction_data",
    "PackedSFTDataset": "supplement.instruction_data",
    "get_packed_sft_dataset": "supplement.instruction_data",
    "iterate_batches": "supplement.instruction_data",
    "InstructionTuningConfig": "supplement.instruction_tuning",
    "InstructionTuningTrainer": "supplement.instruction_tuning",
    "HHDataArguments": "supplement.hh",
    "load_hh": "supplement.hh",
    "compute_per_instance_dpo_loss": "supplement.dpo_loss",
    "AlpacaDPOConfig": "supplement.dpo_trainer",
    "AlpacaDPOTrainer": "supplement.dpo_trainer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "GRADING_MODES",
    "LENGTH_NORMALIZATIONS",
    "LOSS_TYPES",
    "PROMPT_NAMES",
    "accurate_reward_fn",
    "aggregate_per_token_loss",
    "AlpacaDPOConfig",
    "AlpacaDPOTrainer",
    "compute_entropy",
    "compute_group_normalized_rewards",
    "compute_grpo_clip_loss",
    "compute_grpo_no_clip_loss",
    "compute_naive_policy_gradient_loss",
    "compute_per_instance_dpo_loss",
    "compute_policy_gradient_loss",
    "evaluate",
    "evaluate_vllm",
    "evaluate_zero_shot",
    "ExpertIterationConfig",
    "ExpertIterationTrainer",
    "format_prompt",
    "get_packed_sft_dataset",
    "get_response_log_probs",
    "grade_answer",
    "grade_batch",
    "GradingPool",
    "grpo_microbatch_train_step",
    "HHDataArguments",
    "InstructionDataArguments",
    "InstructionTuningConfig",
    "InstructionTuningTrainer",
    "iterate_batches",
    "load_benchmark",
    "load_hh",
    "load_math_problems",
    "load_prompt_template",
    "load_sft_examples",
    "log_generations",
    "LogGenerationsCallback",
    "make_trl_reward_funcs",
    "MalformedRowError",
    "masked_mean",
    "masked_normalize",
    "MathDataArguments",
    "MathGRPOConfig",
    "MathGRPOTrainer",
    "MathSFTConfig",
    "MathSFTTrainer",
    "MetricsLogCallback",
    "normalize_group_rewards",
    "PackedSFTDataset",
    "parse_gsm8k_response",
    "parse_mmlu_response",
    "plot_runs",
    "question_only_answer_reward",
    "question_only_reward_fn",
    "r1_zero_answer_reward",
    "r1_zero_format_reward",
    "r1_zero_reward_fn",
    "run_zero_shot",
    "Sampler",
    "SamplingConfig",
    "sft_microbatch_train_step",
    "SFTCollator",
    "tokenize_prompt_and_output",
    "TransformersSampler",
    "TRLReward",
    "VLLMSampler",
    "load_sampler",
    "WallClockBudgetCallback",
    "ZeroShotArguments",
    "ZeroShotSamplingConfig",
]

"""MathGRPOConfig: the assignment's defaults, their mapping onto TRL's fields, and start-up errors."""

from __future__ import annotations

import pytest

from trl_math.grpo_config import MathGRPOConfig

CPU = dict(bf16=False, use_cpu=True, report_to="none", eval_strategy="no")


def config(tmp_path, **overrides) -> MathGRPOConfig:
    return MathGRPOConfig(output_dir=str(tmp_path), **{**CPU, **overrides})


def test_defaults_are_the_assignments(tmp_path):
    args = config(tmp_path)
    assert (args.loss_type, args.length_normalization, args.use_std_normalization) == (
        "reinforce_with_baseline", "masked_mean", True)
    assert (args.advantage_eps, args.learning_rate, args.adam_beta1, args.adam_beta2) == (1e-6, 1e-5, 0.9, 0.95)
    assert (args.weight_decay, args.max_grad_norm, args.max_steps, args.lr_scheduler_type) == (0.0, 1.0, 200, "constant")
    assert (args.temperature, args.top_p, args.top_k, args.min_p, args.repetition_penalty) == (1.0, 1.0, 0, None, 1.0)
    assert (args.max_completion_length, args.normalize_constant) == (1024, 1024.0)
    assert (args.beta, args.scale_rewards, args.mask_truncated_completions) == (0.0, "group", False)
    assert args.vllm_importance_sampling_correction is False
    assert args.vllm_gpu_memory_utilization == 0.85
    assert args.logging_steps == 1
    # 256 rollouts in groups of 8, one optimizer step of 128 micro-batches of 2 on one process
    assert (args.num_generations, args.generation_batch_size, args.num_iterations) == (8, 256, 1)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (2, 128, 128)
    assert args.generation_kwargs == {"min_new_tokens": 4}


def test_vllm_sampling_stops_at_answer_tag(tmp_path):
    args = config(tmp_path, use_vllm=True)
    assert args.generation_kwargs == {"min_tokens": 4, "stop": ["</answer>"], "include_stop_str_in_output": True}
    args = config(tmp_path, use_vllm=True, stop_string=None, generation_kwargs={"seed": 3})
    assert args.generation_kwargs == {"seed": 3, "min_tokens": 4}


def test_off_policy_mapping(tmp_path):
    args = config(tmp_path, rollout_batch_size=256, train_batch_size=64, gradient_accumulation_steps=32,
                  epochs_per_rollout_batch=2, loss_type="grpo_clip", use_std_normalization=False, cliprange=0.1)
    assert (args.per_device_train_batch_size, args.steps_per_generation, args.num_iterations) == (2, 128, 2)
    assert (args.epsilon, args.scale_rewards) == (0.1, "none")
    # Optimizer steps per rollout batch: steps_per_generation * num_iterations / gradient_accumulation_steps
    assert args.steps_per_generation * args.num_iterations // args.gradient_accumulation_steps == 8


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"loss_type": "dapo"}, "loss_type"),
        ({"length_normalization": "token_sum"}, "length_normalization"),
        ({"normalize_constant": 0.0}, "normalize_constant"),
        ({"train_batch_size": 256, "gradient_accumulation_steps": 3}, "train_batch_size, gradient_accumulation_steps"),
        ({"rollout_batch_size": 100, "group_size": 8, "train_batch_size": 100, "gradient_accumulation_steps": 1},
         "rollout_batch_size, group_size"),
        ({"train_batch_size": 4, "group_size": 8, "gradient_accumulation_steps": 1}, "train_batch_size, group_size"),
        ({"rollout_batch_size": 256, "train_batch_size": 96, "gradient_accumulation_steps": 1},
         "rollout_batch_size, train_batch_size"),
        ({"group_size": 1}, "group_size"),
        ({"epochs_per_rollout_batch": 0}, "epochs_per_rollout_batch"),
        ({"cliprange": -0.2}, "cliprange"),
        ({"max_completion_length": 2}, "max_completion_length, min_new_tokens"),
        ({"max_train_hours": 0}, "max_train_hours"),
        ({"beta": 0.04}, "beta"),
        ({"mask_truncated_completions": True}, "mask_truncated_completions"),
        ({"top_entropy_quantile": 0.2}, "top_entropy_quantile"),
        ({"epsilon_high": 0.28}, "epsilon_high"),
        ({"num_generations": 4}, "num_generations: is derived from group_size"),
        ({"per_device_train_batch_size": 4}, "per_device_train_batch_size: is derived from train_batch_size"),
        ({"num_iterations": 2}, "num_iterations: is derived from epochs_per_rollout_batch"),
        ({"steps_per_generation": 4}, "steps_per_generation: is derived"),
        ({"epsilon": 0.3}, "epsilon: is derived from cliprange"),
        ({"scale_rewards": "batch"}, "scale_rewards: is derived from use_std_normalization"),
        ({"use_vllm": True, "generation_kwargs": {"min_tokens": 1}}, r"generation_kwargs\['min_tokens'\]"),
    ],
)
def test_bad_configs_fail_naming_the_fields(tmp_path, overrides, fields):
    with pytest.raises(ValueError, match=f"MathGRPOConfig: {fields}"):
        config(tmp_path, **overrides)


def test_trainer_requires_the_math_config(tiny_checkpoint, tmp_path):
    from trl import GRPOConfig

    from trl_math.grpo_trainer import MathGRPOTrainer

    with pytest.raises(TypeError, match="needs a MathGRPOConfig"):
        MathGRPOTrainer(str(tiny_checkpoint), [], GRPOConfig(output_dir=str(tmp_path), **CPU))


def test_checkpoints_inside_a_rollout_batch_are_warned_about(tmp_path):
    off_policy = {"rollout_batch_size": 256, "train_batch_size": 128, "gradient_accumulation_steps": 64,
                  "epochs_per_rollout_batch": 2, "save_strategy": "steps"}  # 4 optimizer steps per rollout batch
    with pytest.warns(UserWarning, match=r"save_steps \(50\) is not a multiple of the 4 optimizer steps"):
        MathGRPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, save_steps=50, **off_policy)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="MathGRPOConfig: save_steps")
        MathGRPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, save_steps=48, **off_policy)


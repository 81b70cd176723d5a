"""GRPO on MATH with MathGRPOTrainer (CS336 Assignment 5, sections 7-9).

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/grpo.py \
        --config recipes/configs/grpo/baseline.yaml [--learning_rate 3e-5 ...]

With no arguments (`python recipes/grpo.py`, `accelerate launch recipes/grpo.py`) it runs the CPU learning
demo instead: a tiny model built locally, warm-started with SFT, then trained with GRPO on synthetic sums
(`--demo --seed 1 --output_dir runs/demo-1 ...` sets its options; see trl_math/demo.py).

Arguments: GRPOScriptArguments (data, reward, final validation), MathGRPOConfig and TRL's ModelConfig
(model, dtype, LoRA); YAML via --config, command-line flags override it.

Relaunched into an output_dir that holds a checkpoint, it continues from the last one (`--resume false` starts
over; trl_math.resume). On SIGTERM it stops at the first safe point (the end of the rollout batch in flight, or
between two chunks of a validation), saves a checkpoint and exits with 75 (trl_math.preemption).
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from trl_math.data import PROMPT_NAMES, MathDataArguments, record_data_summaries
from trl_math.grading.registry import resolve_callable, resolve_reward_fn
from trl_math.grpo_config import MathGRPOConfig
from trl_math.grpo_trainer import MathGRPOTrainer
from trl_math.model_config import apply_model_config
from trl_math.preemption import Preemption
from trl_math.resume import resume_or_start_over, run_config


@dataclass
class GRPOScriptArguments(MathDataArguments):
    """Data (see MathDataArguments), the reward and the final validation of a GRPO run."""

    reward: str | None = field(
        default=None,
        metadata={
            "help": "Reward: 'r1_zero' or 'question_only'. Validation always grades with this course reward; training "
            "too unless reward_funcs is set. None: the prompt's name."
        },
    )
    reward_mode: str = field(
        default="course",
        metadata={"help": "Training grader: 'course' (the course's r1_zero_reward_fn) or 'accurate' (trl-math's). "
                  "Validation always uses the course's."},
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Training reward functions as dotted import paths (package.module.function), used instead of "
            "`reward`, e.g. a shaped reward to experiment with. Validation still grades with the course's reward."
        },
    )
    final_full_eval: bool = field(
        default=False,
        metadata={"help": "After training, validate on every row of eval_source (the leaderboard's 5,000): logged as "
                  "final_eval_*, files in <output_dir>/final_eval/."},
    )


def course_reward(args: GRPOScriptArguments) -> str:
    """The course reward of the run ('r1_zero' or 'question_only'): validation grades with it."""
    reward = args.reward or args.prompt
    if reward not in PROMPT_NAMES:
        raise ValueError(f"reward: {reward!r} is not one of {PROMPT_NAMES} (set --reward with a custom prompt file)")
    return reward


def reward_functions(args: GRPOScriptArguments) -> list:
    """The training reward functions: custom dotted paths, or the course reward's [answer reward (trained on),
    format reward (logged; default_weight 0)]."""
    if args.reward_funcs:
        return [resolve_callable(path) for path in args.reward_funcs]
    from trl_math.grading import make_trl_reward_funcs

    return make_trl_reward_funcs(prompt=course_reward(args), mode=args.reward_mode)


def build(script_args: GRPOScriptArguments, training_args: MathGRPOConfig, model_args: ModelConfig):
    """Everything before the first training step: the checks, the data, the run's settings and data checked or
    recorded (trl_math.resume), the data's summary (<output_dir>/data_summary.json) and the trainer. Returns
    (trainer, checkpoint to resume from)."""
    reward_funcs = reward_functions(script_args)
    if script_args.train_source is None:
        raise ValueError("train_source: required (a JSONL file or a Hub dataset id)")
    validating = training_args.eval_strategy != "no" or script_args.final_full_eval
    if validating and script_args.eval_source is None:
        raise ValueError("eval_source: required when eval_strategy is not 'no' or final_full_eval is set")

    summaries = {"train": {}, "eval": {}}
    train = script_args.load_problems("train", summary=summaries["train"])
    evaluation = script_args.load_problems("eval", summary=summaries["eval"]) \
        if training_args.eval_strategy != "no" else None
    checkpoint = resume_or_start_over(training_args, "grpo", run_config(
        model_args, script_args, training_args, train=train, validation=evaluation))
    record_data_summaries(training_args.output_dir, summaries)
    apply_model_config(training_args, model_args)
    trainer = MathGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        validation_reward_fn=resolve_reward_fn(course_reward(script_args)),
        peft_config=get_peft_config(model_args),
    )
    return trainer, checkpoint


def main(script_args: GRPOScriptArguments, training_args: MathGRPOConfig, model_args: ModelConfig):
    with Preemption() as preemption:  # a preempted run exits with 75 once torn down
        trainer, checkpoint = build(script_args, training_args, model_args)
        with preemption.guard(trainer):
            trainer.train(resume_from_checkpoint=checkpoint)
            preemption.safe_point()
            trainer.save_model(training_args.output_dir)
            if script_args.final_full_eval:
                preemption.safe_point()
                full = script_args.load_problems("eval", limit=None)
                trainer.evaluate(eval_dataset=full, metric_key_prefix="final_eval")
            if training_args.push_to_hub:
                preemption.safe_point()
                trainer.push_to_hub(dataset_name=script_args.train_source)
        # Tear down in an order that cannot deadlock: with gloo, a process group destroyed by the last DDP reference
        # (when `trainer` goes out of scope after `end()`) joins its worker thread while holding the GIL, and that
        # worker may need the GIL to free a finished collective. Release the trainer while the group is still
        # registered, then let `end_training()` shut the group down (it waits for pending work first).
        accelerator = trainer.accelerator
        accelerator.wait_for_everyone()
        del trainer
        gc.collect()
        accelerator.end_training()  # finishes the trackers and destroys the process group


# The recipe's arguments, in the order main() takes them (tests/test_docs.py parses documented commands with them).
ARGUMENTS = (GRPOScriptArguments, MathGRPOConfig, ModelConfig)

if __name__ == "__main__":
    if len(sys.argv) == 1 or sys.argv[1] == "--demo":  # no arguments: the CPU learning demo (trl_math.demo)
        from trl_math.demo import main as demo

        demo(sys.argv[2:])
    else:
        main(*TrlParser(ARGUMENTS).parse_args_and_config())

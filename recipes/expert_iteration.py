"""Expert iteration on MATH with ExpertIterationTrainer: the expert_iteration_experiment problem
(CS336 Assignment 5, section 5).

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/expert_iteration.py \
        --config recipes/configs/expert_iteration/db512_g4_e1.yaml [--rollouts_per_question 8 ...]

Arguments: MathDataArguments (questions: train_source; validation: eval_source), ExpertIterationConfig
and TRL's ModelConfig; YAML via --config, command-line flags override it. A run that dies resumes after
its last completed EI step when launched again with the same output_dir, after checking the run's settings and
data (`--resume false` starts over; trl_math.resume). On SIGTERM it stops at the first safe point and exits with 75
(trl_math.preemption).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser

from trl_math.data import PROMPT_NAMES, MathDataArguments, record_data_summaries
from trl_math.expert_iteration import ExpertIterationConfig, ExpertIterationTrainer, saved_state
from trl_math.grading.registry import resolve_reward_fn
from trl_math.model_config import apply_model_config
from trl_math.preemption import Preemption
from trl_math.resume import resume_or_start_over, run_config


@dataclass
class EIScriptArguments(MathDataArguments):
    """Questions and validation problems (see MathDataArguments) and the reward that filters rollouts."""

    reward_fn: str | None = field(
        default=None,
        metadata={"help": "Reward deciding which rollouts are kept and grading validation: 'r1_zero', 'question_only' "
                  "or a dotted path package.module.function(response, ground_truth) -> dict. None: the prompt's name."},
    )


def build(data_args: EIScriptArguments, training_args: ExpertIterationConfig, model_args: ModelConfig):
    """Everything before the first EI step: the checks, the data, the run's settings and data checked or recorded
    (trl_math.resume), the data's summary (<output_dir>/data_summary.json) and the trainer."""
    if data_args.train_source is None:
        raise ValueError("train_source: required (the questions: a JSONL file or a Hub dataset id)")
    if data_args.reward_fn is None and data_args.prompt not in PROMPT_NAMES:
        raise ValueError(f"reward_fn: required with a custom prompt file ({data_args.prompt!r})")
    summaries = {"train": {}, "eval": {}}
    train = data_args.load_problems("train", summary=summaries["train"])
    validation = data_args.load_problems("eval", summary=summaries["eval"]) if data_args.eval_source is not None else None
    resume_or_start_over(training_args, "expert_iteration", run_config(
        model_args, data_args, training_args, train=train, validation=validation), latest=saved_state)
    record_data_summaries(training_args.output_dir, summaries)
    apply_model_config(training_args, model_args)
    return ExpertIterationTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        reward_fn=resolve_reward_fn(data_args.reward_fn or data_args.prompt),
    )


def main(data_args: EIScriptArguments, training_args: ExpertIterationConfig, model_args: ModelConfig):
    with Preemption() as preemption:  # a preempted run exits with 75 once torn down
        trainer = build(data_args, training_args, model_args)
        with preemption.guard(trainer):
            trainer.train()
        trainer.end()


# The recipe's arguments, in the order main() takes them (tests/test_docs.py parses documented commands with them).
ARGUMENTS = (EIScriptArguments, ExpertIterationConfig, ModelConfig)

if __name__ == "__main__":
    main(*TrlParser(ARGUMENTS).parse_args_and_config())

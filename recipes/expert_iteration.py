"""Expert iteration on MATH with ExpertIterationTrainer: the expert_iteration_experiment problem
(CS336 Assignment 5, section 5).

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/expert_iteration.py \
        --config recipes/configs/expert_iteration/db512_g4_e1.yaml [--rollouts_per_question 8 ...]

Arguments: MathDataArguments (questions: train_source; validation: eval_source), ExpertIterationConfig
and TRL's ModelConfig; YAML via --config, command-line flags override it. A run that dies resumes after
its last completed EI step when launched again with the same output_dir (`--resume false` starts over;
trl_math.resume).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from trl import ModelConfig, TrlParser

from trl_math.data import PROMPT_NAMES, MathDataArguments
from trl_math.expert_iteration import ExpertIterationConfig, ExpertIterationTrainer, saved_state
from trl_math.grading.registry import resolve_reward_fn
from trl_math.model_config import apply_model_config
from trl_math.resume import resume_or_start_over, run_config


@dataclass
class EIScriptArguments(MathDataArguments):
    """Questions and validation problems (see MathDataArguments) and the reward that filters rollouts."""

    reward_fn: str | None = field(
        default=None,
        metadata={"help": "Reward deciding which rollouts are kept and grading validation: 'r1_zero', 'question_only' "
                  "or a dotted path package.module.function(response, ground_truth) -> dict. None: the prompt's name."},
    )

    run_fields: ClassVar[tuple[str, ...]] = MathDataArguments.run_fields + ("reward_fn",)


def build(data_args: EIScriptArguments, training_args: ExpertIterationConfig, model_args: ModelConfig):
    """Everything before the first EI step: the checks, the run's settings (trl_math.resume), the data (its summary in
    <output_dir>/data_summary.json) and the trainer."""
    if data_args.train_source is None:
        raise ValueError("train_source: required (the questions: a JSONL file or a Hub dataset id)")
    if data_args.reward_fn is None and data_args.prompt not in PROMPT_NAMES:
        raise ValueError(f"reward_fn: required with a custom prompt file ({data_args.prompt!r})")
    resume_or_start_over(training_args, "expert_iteration", run_config(model_args, data_args, training_args),
                         latest=saved_state)
    apply_model_config(training_args, model_args)
    return ExpertIterationTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=data_args.load_problems("train", output_dir=training_args.output_dir),
        eval_dataset=data_args.load_problems("eval", output_dir=training_args.output_dir)
        if data_args.eval_source is not None else None,
        reward_fn=resolve_reward_fn(data_args.reward_fn or data_args.prompt),
    )


def main(data_args: EIScriptArguments, training_args: ExpertIterationConfig, model_args: ModelConfig):
    trainer = build(data_args, training_args, model_args)
    trainer.train()
    trainer.end()


# The recipe's arguments, in the order main() takes them (tests/test_docs.py parses documented commands with them).
ARGUMENTS = (EIScriptArguments, ExpertIterationConfig, ModelConfig)

if __name__ == "__main__":
    main(*TrlParser(ARGUMENTS).parse_args_and_config())

"""SFT on reasoning traces with MathSFTTrainer: the sft_experiment problem (CS336 Assignment 5, section 4).

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/sft.py \
        --config recipes/configs/sft/size_128.yaml [--learning_rate 5e-5 ...]

Arguments: SFTDataArguments (the SFT examples), MathDataArguments (the validation problems: eval_source,
eval_limit, prompt, fields), MathSFTConfig and TRL's ModelConfig (model, dtype, LoRA); YAML via --config,
command-line flags override it. Validation (eval_strategy) writes <output_dir>/eval/*/ and logs
eval_answer_accuracy; after training the final policy is validated once more unless the last step was.

Relaunched into an output_dir that holds a checkpoint, it continues from the last one (`--resume false` starts
over; trl_math.resume). On SIGTERM it stops at the first safe point (the end of the optimizer step in flight, or
between two chunks of a validation), saves a checkpoint and exits with 75 (trl_math.preemption).
"""

from __future__ import annotations


from trl import ModelConfig, TrlParser, get_peft_config

from trl_math.data import PROMPT_NAMES, MathDataArguments, record_data_summaries
from trl_math.grading.registry import resolve_reward_fn
from trl_math.model_config import apply_model_config
from trl_math.preemption import Preemption
from trl_math.resume import resume_or_start_over, run_config
from trl_math.sft_config import MathSFTConfig
from trl_math.sft_data import SFTDataArguments, load_sft_examples
from trl_math.sft_trainer import MathSFTTrainer


def build(sft_args: SFTDataArguments, data_args: MathDataArguments, training_args: MathSFTConfig,
          model_args: ModelConfig):
    """Everything before the first training step: the checks, the run's settings (trl_math.resume), the data (the
    validation problems' summary in <output_dir>/data_summary.json) and the trainer. Returns (trainer, checkpoint to
    resume from)."""
    if sft_args.sft_source is None:
        raise ValueError("sft_source: required (a JSONL file of {prompt, response, ground_truth} rows or a Hub id)")
    if data_args.train_source is not None:
        raise ValueError("train_source: not used by SFT; give the SFT examples with --sft_source")
    if training_args.eval_strategy != "no" and data_args.eval_source is None:
        raise ValueError("eval_source: required when eval_strategy is not 'no'")
    if data_args.prompt not in PROMPT_NAMES:
        raise ValueError(f"prompt: validation grades with the reward of 'r1_zero' or 'question_only', got {data_args.prompt!r}")

    validation_summary: dict = {}
    validation = data_args.load_problems("eval", summary=validation_summary) \
        if data_args.eval_source is not None else None
    train = load_sft_examples(
        sft_args.sft_source,
        split=sft_args.sft_split,
        prompt_field=sft_args.prompt_field,
        response_field=sft_args.response_field,
        ground_truth_field=sft_args.ground_truth_field,
        require_ground_truth=training_args.filter_correct,
    )
    checkpoint = resume_or_start_over(training_args, "sft", run_config(
        model_args, sft_args, data_args, training_args, train=train, validation=validation))
    record_data_summaries(training_args.output_dir, {"eval": validation_summary})
    apply_model_config(training_args, model_args)
    trainer = MathSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        reward_fn=resolve_reward_fn(data_args.prompt),
        peft_config=get_peft_config(model_args),
    )
    return trainer, checkpoint


def main(sft_args: SFTDataArguments, data_args: MathDataArguments, training_args: MathSFTConfig, model_args: ModelConfig):
    with Preemption() as preemption:  # a preempted run exits with 75 once torn down
        trainer, checkpoint = build(sft_args, data_args, training_args, model_args)
        with preemption.guard(trainer):
            trainer.train(resume_from_checkpoint=checkpoint)
            preemption.safe_point()
            trainer.save_model(training_args.output_dir)
            validated_steps = {log["step"] for log in trainer.state.log_history if "eval_answer_accuracy" in log}
            if trainer.eval_dataset is not None and trainer.state.global_step not in validated_steps:
                preemption.safe_point()
                trainer.evaluate()
            if training_args.push_to_hub:
                preemption.safe_point()
                trainer.push_to_hub(dataset_name=sft_args.sft_source)
        trainer.end()  # finishes the trackers and destroys the process group


# The recipe's arguments, in the order main() takes them (tests/test_docs.py parses documented commands with them).
ARGUMENTS = (SFTDataArguments, MathDataArguments, MathSFTConfig, ModelConfig)

if __name__ == "__main__":
    main(*TrlParser(ARGUMENTS).parse_args_and_config())

"""Instruction tuning on packed Alpaca documents with InstructionTuningTrainer: the sft problem of the
assignment's supplement (Instruction Tuning and RLHF, section 3.2).

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/instruction_tuning.py \
        --config recipes/configs/instruction_tuning/llama31_8b.yaml [--learning_rate 1e-5 ...]

Arguments: InstructionDataArguments (train_source / eval_source: local .jsonl(.gz) files of {prompt, response}
or Hub dataset ids, seq_length, shuffle_documents), InstructionTuningConfig and TRL's ModelConfig (model,
dtype, attention, LoRA); YAML via --config, command-line flags override it. Logs the training loss and, with
eval_strategy, the validation loss; the model and its tokenizer are saved to output_dir.

Relaunched into an output_dir that holds a checkpoint, it continues from the last one after checking the run's
settings and data (`--resume false` starts over; trl_math.resume). On SIGTERM it finishes the optimizer step in
flight, saves a checkpoint and exits with 75 (trl_math.preemption).
"""

from __future__ import annotations

from transformers import AutoTokenizer
from trl import ModelConfig, TrlParser, get_peft_config

from trl_math.model_config import apply_model_config
from trl_math.preemption import Preemption
from trl_math.resume import resume_or_start_over, run_config
from trl_math.supplement.instruction_data import InstructionDataArguments
from trl_math.supplement.instruction_tuning import InstructionTuningConfig, InstructionTuningTrainer


def main(data_args: InstructionDataArguments, training_args: InstructionTuningConfig, model_args: ModelConfig):
    with Preemption() as preemption:  # a preempted run exits with 75 once torn down
        if training_args.eval_strategy != "no" and data_args.eval_source is None:
            raise ValueError("eval_source: required when eval_strategy is not 'no'")
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                                  trust_remote_code=training_args.trust_remote_code)
        seed = training_args.seed if training_args.data_seed is None else training_args.data_seed
        train = data_args.load_packed("train", tokenizer, seed)
        validation = data_args.load_packed("eval", tokenizer, seed) if data_args.eval_source is not None else None
        print(f"instruction tuning: {train.num_documents} documents -> {len(train)} sequences of "
              f"{data_args.seq_length} tokens" + (f"; validation: {len(validation)} sequences" if validation is not None else ""))
        checkpoint = resume_or_start_over(training_args, "instruction_tuning", run_config(
            model_args, data_args, training_args, train=train, validation=validation))
        apply_model_config(training_args, model_args)
        trainer = InstructionTuningTrainer(
            model=model_args.model_name_or_path,
            args=training_args,
            train_dataset=train,
            eval_dataset=validation,
            processing_class=tokenizer,
            peft_config=get_peft_config(model_args),
        )
        with preemption.guard(trainer):
            trainer.train(resume_from_checkpoint=checkpoint)
            preemption.safe_point()
            trainer.save_model(training_args.output_dir)  # the model and its tokenizer
            if validation is not None and not any(
                log["step"] == trainer.state.global_step and "eval_loss" in log for log in trainer.state.log_history
            ):
                preemption.safe_point()
                trainer.evaluate()
            if training_args.push_to_hub:
                preemption.safe_point()
                trainer.push_to_hub(dataset_name=data_args.train_source)
        trainer.end()


# The recipe's arguments, in the order main() takes them (tests/test_docs.py parses documented commands with them).
ARGUMENTS = (InstructionDataArguments, InstructionTuningConfig, ModelConfig)

if __name__ == "__main__":
    main(*TrlParser(ARGUMENTS).parse_args_and_config())

"""DPO on Anthropic HH with AlpacaDPOTrainer: the dpo_training problem of the assignment's supplement
(Instruction Tuning and RLHF, section 5.4).

    python recipes/dpo.py --config recipes/configs/dpo/hh.yaml [--ref_model_device cuda:1 ...]

Arguments: HHDataArguments (hh_sources: the folder of the course's four HH files, HH files, or the Hub id
Anthropic/hh-rlhf; validation_size), AlpacaDPOConfig and TRL's ModelConfig (the instruction-tuned model, which
is also loaded, a second time, as the frozen reference); YAML via --config, command-line flags override it.
Logs the loss and the implicit reward's accuracy at every step and on the validation pairs every eval_steps
(eval_rewards/accuracies), and saves the checkpoint of best validation accuracy, with its tokenizer, to output_dir.

Relaunched into an output_dir that holds a checkpoint, it continues from the last one after checking the run's
settings and data (`--resume false` starts over; trl_math.resume). On SIGTERM it finishes the optimizer step in
flight, saves a checkpoint and exits with 75 (trl_math.preemption).
"""

from __future__ import annotations

from collections import Counter

from trl import ModelConfig, TrlParser, get_peft_config

from trl_math.model_config import apply_model_config
from trl_math.preemption import Preemption
from trl_math.resume import resume_or_start_over, run_config
from trl_math.supplement.dpo_trainer import AlpacaDPOConfig, AlpacaDPOTrainer
from trl_math.supplement.hh import HHDataArguments


def main(hh_args: HHDataArguments, training_args: AlpacaDPOConfig, model_args: ModelConfig):
    with Preemption() as preemption:  # a preempted run exits with 75 once torn down
        seed = training_args.seed if training_args.data_seed is None else training_args.data_seed
        train, validation = hh_args.load(seed)
        sources = dict(sorted(Counter(train["source"]).items()))
        print(f"DPO on {len(train)} HH pairs ({sources}); {len(validation)} for validation")
        checkpoint = resume_or_start_over(training_args, "dpo", run_config(
            model_args, hh_args, training_args, train=train, validation=validation))
        apply_model_config(training_args, model_args)
        trainer = AlpacaDPOTrainer(
            model=model_args.model_name_or_path,
            args=training_args,
            train_dataset=train,
            eval_dataset=validation if training_args.eval_strategy != "no" else None,
            peft_config=get_peft_config(model_args),
        )
        with preemption.guard(trainer):
            trainer.train(resume_from_checkpoint=checkpoint)
            preemption.safe_point()
            trainer.save_model(training_args.output_dir)  # the best validation checkpoint, with load_best_model_at_end
            if trainer.state.best_model_checkpoint is not None:
                print(f"saved the checkpoint of best {training_args.metric_for_best_model} ({trainer.state.best_metric}): "
                      f"{trainer.state.best_model_checkpoint}")
            if training_args.push_to_hub:
                preemption.safe_point()
                trainer.push_to_hub(dataset_name="Anthropic/hh-rlhf")
        trainer.end()


# The recipe's arguments, in the order main() takes them (tests/test_docs.py parses documented commands with them).
ARGUMENTS = (HHDataArguments, AlpacaDPOConfig, ModelConfig)

if __name__ == "__main__":
    main(*TrlParser(ARGUMENTS).parse_args_and_config())

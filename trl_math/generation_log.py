"""In-the-loop logging of generations (the assignment's log_generations) and its Trainer callback.

`log_generations` samples responses for some prompts (through a `Sampler`, as the evaluation does), grades them, and measures each response's mean token entropy under the model. Per
example: prompt, response, ground truth, format / answer / total reward, response length in tokens,
mean token entropy. Aggregates: mean response length overall, of correct (reward 1) and of incorrect
responses, mean token entropy, accuracy.

`LogGenerationsCallback` runs it at each evaluation on the first validation problems: aggregates go to
the trainer's log (`generations/...`), every row to `<output_dir>/generations/step<N>.jsonl`, and the
table to Weights & Biases when the run reports there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from .files import JsonlWriter
from .grading.reward_pool import RewardFn, grade
from .logprobs import get_response_log_probs, tokenize_prompt_and_output
from .losses import masked_mean
from .sampling import Sampler, SamplingConfig, trainer_sampler


@dataclass
class GenerationLog:
    """The logged examples (one dict each) and their aggregates."""

    rows: list[dict]
    aggregates: dict[str, float]


@torch.no_grad()
def response_entropies(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8) -> list[float]:
    """Mean next-token entropy over each response's tokens (nan for an empty response)."""
    values: list[float] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenize_prompt_and_output(
            list(prompts[start : start + batch_size]), list(responses[start : start + batch_size]), tokenizer
        )
        batch = {key: value.to(model.device) for key, value in batch.items()}
        entropy = get_response_log_probs(model, batch["input_ids"], batch["labels"], return_token_entropy=True)
        values.extend(masked_mean(entropy["token_entropy"], batch["response_mask"], dim=-1).tolist())
    return values


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def log_generations(
    model,
    tokenizer,
    prompts: Sequence[str],
    ground_truths: Sequence[str],
    reward_fn: RewardFn,
    sampler: Sampler | None = None,
    batch_size: int = 8,
    pool=None,
) -> GenerationLog:
    """Sample a response for each of `prompts` (with `sampler`; None: `model.generate` with the assignment's
    sampling), grade it, measure its entropy under `model`.

    `model` scores the entropies: with a vLLM sampler it must hold the weights the engine generated with.
    `pool`: a batch grader to reuse (see grading.reward_pool.grading_pool); None starts one for this call.
    """
    sampler = sampler or trainer_sampler(model, tokenizer, SamplingConfig(), batch_size)
    completions = [group[0] for group in sampler.sample(prompts)]
    responses = [c.text for c in completions]
    rewards = grade(reward_fn, responses, [str(t) for t in ground_truths], pool)
    entropies = response_entropies(model, tokenizer, prompts, responses, batch_size)
    rows = [
        {
            "prompt": prompt,
            "response": completion.text,
            "ground_truth": str(truth),
            "format_reward": float(reward["format_reward"]),
            "answer_reward": float(reward["answer_reward"]),
            "reward": float(reward["reward"]),
            "response_tokens": completion.num_tokens,
            "mean_token_entropy": entropy,
        }
        for prompt, truth, completion, reward, entropy in zip(prompts, ground_truths, completions, rewards, entropies, strict=True)
    ]
    lengths = [float(r["response_tokens"]) for r in rows]
    correct = [r["reward"] == 1 for r in rows]
    aggregates = {
        "mean_response_length": _mean(lengths),
        "mean_response_length_correct": _mean([n for n, ok in zip(lengths, correct) if ok]),
        "mean_response_length_incorrect": _mean([n for n, ok in zip(lengths, correct) if not ok]),
        "mean_token_entropy": _mean([r["mean_token_entropy"] for r in rows]),
        "answer_accuracy": _mean([r["answer_reward"] for r in rows]),
        "format_accuracy": _mean([r["format_reward"] for r in rows]),
    }
    return GenerationLog(rows, aggregates)


class LogGenerationsCallback(TrainerCallback):
    """At each evaluation, `log_generations` on the first `num_examples` validation problems (see module doc).

    Samples like the trainer's validation (`trainer.validation_sampler`, whose vLLM engine MathSFTTrainer
    synced before evaluating) and grades with its batch grader (`trainer.grading_pool`), on the main process
    (a handful of problems: the others wait).
    """

    def __init__(self, trainer, reward_fn: RewardFn, num_examples: int = 4, problems=None):
        problems = trainer.eval_dataset if problems is None else problems
        if problems is None:
            raise ValueError("LogGenerationsCallback needs validation problems (trainer.eval_dataset or `problems`)")
        self.trainer, self.reward_fn = trainer, reward_fn
        self.problems = problems.select(range(min(num_examples, len(problems))))

    def on_evaluate(self, args, state, control, **kwargs):
        from accelerate.utils import broadcast_object_list
        from trl.models.utils import unwrap_model_for_generation

        trainer = self.trainer
        log = None
        with unwrap_model_for_generation(
            trainer.model_wrapped, trainer.accelerator, gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs
        ) as model:
            if trainer.accelerator.is_main_process:
                log = log_generations(
                    model,
                    trainer.processing_class,
                    self.problems["prompt"],
                    self.problems["ground_truth"],
                    self.reward_fn,
                    trainer.validation_sampler(model),
                    batch_size=args.per_device_eval_batch_size,
                    pool=trainer.grading_pool,
                )
        log = broadcast_object_list([log], from_process=0)[0]
        if trainer.accelerator.is_main_process:
            with JsonlWriter(Path(args.output_dir) / "generations" / f"step{state.global_step:06d}.jsonl") as writer:
                for row in log.rows:
                    writer.write({"step": state.global_step, **row})
            if "wandb" in (args.report_to or []):
                import pandas as pd
                import wandb

                wandb.log({"generations": wandb.Table(dataframe=pd.DataFrame(log.rows))})
        trainer.log({f"generations/{key}": value for key, value in log.aggregates.items()})


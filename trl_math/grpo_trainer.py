"""MathGRPOTrainer: TRL's GRPOTrainer with the assignment's advantages, loss and validation, nothing else.

Overridden hooks, each calling TRL for everything it does not change:

- `_generate_single_turn` cuts transformers-generate completions after the stop string, as vLLM stops;
- `_generate` hands the reward functions each completion's text cut right after the stop string, exactly
  vLLM's `text` with include_stop_str_in_output=True (TRL decodes the token ids, and the token that
  completes "</answer>" may carry more text: Qwen's ">." ends "</answer>."). The loss still covers that
  whole last token, which the policy sampled;
- `_calculate_rewards` keeps the rewards TRL gathered from all processes, so that
- `_generate_and_score_completions` can replace TRL's advantages with `normalize_group_rewards` on whole
  groups of the gathered rewards (the assignment's compute_group_normalized_rewards), slice back this
  process's rows, and carry the raw rewards to the loss (no_baseline needs them);
- `_compute_loss` is the assignment's loss: per-token loss from `compute_policy_gradient_loss`, reduced by
  masked_mean or masked_normalize per example, averaged over the micro-batch, divided by the number of
  micro-batches, so the update does not depend on how a train batch is cut into micro-batches;
- `evaluate` is validation accuracy (trl_math.validation), not TRL's evaluation loop: one completion per
  validation problem, sampled by the trainer's own generation (`GRPOGenerationSampler`: vLLM colocate or
  server, or transformers, with the policy's current weights), each problem once however many processes,
  graded with the course's reward for the prompt (`validation_reward_fn`) whatever reward trains, and
  averaged over problems. No policy forward pass is spent on validation.

Old log-probs are TRL's: computed once per rollout batch, without gradient, when the rollout batch is
reused (off-policy); on-policy they equal the detached current log-probs, which is what TRL passes.

Checkpoints appear whole and record the training time, which `max_train_hours` counts over a resumed run
(trl_math.checkpoints).
"""

from __future__ import annotations

import hashlib
import os
import sys

import torch
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from .advantages import normalize_group_rewards
from .callbacks import WallClockBudgetCallback
from .checkpoints import ResumableTrainerMixin
from .evaluation import EvaluationMismatch
from .files import JsonlWriter, filter_jsonl
from .grading import r1_zero_reward_fn
from .grading.reward_pool import grading_pool
from .grpo_config import MathGRPOConfig
from .losses import aggregate_per_token_loss, compute_policy_gradient_loss
from .model_card import AssignmentModelCardMixin
from .run_log import MetricsLogCallback
from .sampling import Completion, Sampler, completion_from_token_ids
from .validation import validate, validation_dir, validation_metrics, write_validation_problems


class GRPOGenerationSampler(Sampler):
    """MathGRPOTrainer's own generation as a `Sampler`: TRL's vLLM (colocate or server; weights synced when the
    step changed) or transformers path, with the rollouts' sampling settings (temperature, top_p,
    max_completion_length, stop string, min_new_tokens). Unseeded: `request_ids` are not used.

    Every process must call it together (TRL's server mode gathers the prompts of all processes)."""

    def __init__(self, trainer: "MathGRPOTrainer"):
        self.trainer = trainer

    def sample(self, prompts, n=1, request_ids=None):
        trainer = self.trainer
        prompt_ids, images, multimodal_fields = trainer._tokenize_prompts([p for p in prompts for _ in range(n)])
        completion_ids, _ = trainer._generate_single_turn(prompt_ids, images, multimodal_fields, n)
        completions = [trainer.completion(ids) for ids in completion_ids]
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler, with the shuffle of epoch e drawn as the (e+1)-th permutation of a generator seeded
    with `seed`: the same orders as TRL's for a run that never stops, and the same again for a run resumed in
    epoch e (TRL's sampler, new in the resumed process, would start over from epoch 0's order). MathGRPOTrainer
    sets the epoch before each pass (accelerate's set_epoch does not reach a sampler behind a skip and a shard)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed)
            for _ in range(self.epoch):  # the draws of the epochs before
                torch.randperm(self.num_samples, generator=self.generator)
        return super().__iter__()


class MathGRPOTrainer(ResumableTrainerMixin, AssignmentModelCardMixin, GRPOTrainer):
    """GRPO with the assignment's group-normalized advantages, policy-gradient losses and validation (module doc).

    `validation_reward_fn(response, ground_truth)`: the course's reward of the prompt (r1_zero_reward_fn, or
    question_only_reward_fn for the question_only prompt); validation grades with it, whatever `reward_funcs`
    train on.
    """

    _tag_names = ["trl", "grpo", "trl-math"]
    _prompt_sampler: EpochSeededRepeatSampler | None = None  # none for an iterable train_dataset
    _name = "MathGRPO"
    assignment_problem = "grpo_train_loop (GRPO experiments)"

    def __init__(self, model, reward_funcs, args: MathGRPOConfig, validation_reward_fn=r1_zero_reward_fn, **kwargs):
        if not isinstance(args, MathGRPOConfig):
            raise TypeError(f"MathGRPOTrainer needs a MathGRPOConfig, got {type(args).__name__}")
        if args.reward_weights is None:  # e.g. make_trl_reward_funcs: answer 1.0, format 0.0 (logged only)
            funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
            args.reward_weights = [float(getattr(f, "default_weight", 1.0)) for f in funcs]
        super().__init__(model, reward_funcs, args, **kwargs)
        # MathGRPOConfig.train_batch_size (the assignment's: rollouts per optimizer step over all processes)
        # shadows TrainingArguments.train_batch_size (per device), which Trainer copied: restore the latter.
        self._train_batch_size = args.per_device_train_batch_size * max(1, args.n_gpu)
        self.validation_reward_fn = validation_reward_fn
        self._grading_pool = None
        self._rollouts_trimmed = False
        if args.max_train_hours is not None:
            self.add_callback(WallClockBudgetCallback(args.max_train_hours, self.training_clock))
        self.add_callback(MetricsLogCallback())  # metrics.jsonl: validation curves against step and time
        if self.eval_dataset is not None and self.accelerator.is_main_process:
            write_validation_problems(self.eval_dataset, args.output_dir)

    # ----------------------------------------------------------------------------------------- rollouts
    def _get_train_sampler(self, dataset=None):
        """TRL's sampler of prompts, resumable in any epoch (EpochSeededRepeatSampler)."""
        sampler = super()._get_train_sampler(dataset)
        options = ("data_source", "mini_repeat_count", "batch_size", "repeat_count", "shuffle", "seed")
        self._prompt_sampler = EpochSeededRepeatSampler(**{name: getattr(sampler, name) for name in options})
        return self._prompt_sampler

    def _run_epoch(self, *args, epoch, **kwargs):
        if self._prompt_sampler is not None:
            self._prompt_sampler.set_epoch(epoch)
        return super()._run_epoch(*args, epoch=epoch, **kwargs)

    def completion(self, ids: list[int]) -> Completion:
        """A generated completion as vLLM reports it (trl_math.sampling), under this run's stop string."""
        stops = [] if self.args.stop_string is None else [self.args.stop_string]
        return completion_from_token_ids(ids, self._tokenizer, stops, self.args.min_new_tokens, True, self.eos_token_ids)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        completion_ids, logprobs = super()._generate_single_turn(
            prompt_ids, images, multimodal_fields, num_generations, has_tool_images
        )
        # transformers' generate ran to EOS or the length limit: end each completion where vLLM would have
        # stopped (vLLM's completions already end there, and are left as they are).
        completion_ids = [self.completion(ids).token_ids for ids in completion_ids]
        if logprobs is not None:
            logprobs = [values[: len(ids)] for values, ids in zip(logprobs, completion_ids)]
        return completion_ids, logprobs

    def _generate(self, prompts):
        prompt_ids, completion_ids, tool_mask, completions, *rest = super()._generate(prompts)
        if not self.tools:  # the reward functions grade vLLM's text: cut right after the stop string
            texts = [self.completion(ids).text for ids in completion_ids]
            completions = [[{**c[-1], "content": t}] if isinstance(c, list) else t for c, t in zip(completions, texts)]
        return (prompt_ids, completion_ids, tool_mask, completions, *rest)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards_per_func = rewards_per_func  # (all processes' completions, reward functions)
        self._graded_completions = completions  # this process's texts, as the reward functions saw them
        return rewards_per_func

    # --------------------------------------------------------------------------------------- advantages
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        rewards_per_func = self._gathered_rewards_per_func
        unscored = torch.isnan(rewards_per_func).all(dim=1)
        if unscored.any():
            raise ValueError(
                f"every reward function returned None for {int(unscored.sum())} completions; "
                "MathGRPOTrainer needs a reward for each completion"
            )
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        num_local = output["completion_ids"].size(0)
        local = slice(self.accelerator.process_index * num_local, (self.accelerator.process_index + 1) * num_local)
        output["raw_rewards"] = rewards[local]
        advantages = normalize_group_rewards(
            rewards, self.num_generations, self.args.advantage_eps, self.args.use_std_normalization
        )
        output["advantages"] = advantages[local]
        logged = self._logs["advantages"]  # TRL logged its own advantages for the completions table
        for _ in range(min(len(logged), len(advantages))):
            logged.pop()
        logged.extend(advantages.tolist())
        self._log_response_lengths(output["completion_mask"], rewards)
        if self.args.log_rollouts:
            self._write_rollouts(inputs, output, local)
        return output

    def _log_response_lengths(self, completion_mask, rewards):
        """Mean response length of correct (reward > 0) and incorrect completions, over all processes."""
        lengths = self.accelerator.gather(completion_mask.sum(dim=1)).float()
        correct = rewards > 0
        for name, selected in (("correct", correct), ("incorrect", ~correct)):
            value = lengths[selected].mean().item() if selected.any() else float("nan")
            self._metrics["train"][f"completions/mean_length_{name}"].append(value)

    def _write_rollouts(self, inputs, output, local):
        """Append this process's rollouts (the graded text, reward, advantage) to rollouts/rank<k>.jsonl.

        The trainer's first rollouts drop the records from their step on: a run resumed from a checkpoint
        regenerates those (they came from a segment that died before its next checkpoint)."""
        path = os.path.join(self.args.output_dir, "rollouts", f"rank{self.accelerator.process_index}.jsonl")
        if not self._rollouts_trimmed:
            filter_jsonl(path, lambda record: record["step"] < self.state.global_step)
            self._rollouts_trimmed = True
        with JsonlWriter(path, append=True) as writer:
            for offset, (example, completion) in enumerate(zip(inputs, self._graded_completions, strict=True)):
                writer.write({
                    "step": self.state.global_step,
                    "index": local.start + offset,
                    "prompt": example["prompt"],
                    "completion": completion,
                    "reward": output["raw_rewards"][offset].item(),
                    "advantage": output["advantages"][offset].item(),
                })

    # --------------------------------------------------------------------------------------------- loss
    def _compute_loss(self, model, inputs):
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        log_probs, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True
        )
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
        old_log_probs = inputs.get("old_per_token_logps")
        per_token_loss, metadata = compute_policy_gradient_loss(
            log_probs,
            self.args.loss_type,
            raw_rewards=inputs["raw_rewards"].unsqueeze(1),
            advantages=inputs["advantages"].unsqueeze(1),
            old_log_probs=log_probs.detach() if old_log_probs is None else old_log_probs,
            cliprange=self.args.cliprange,
        )
        if "importance_sampling_ratio" in inputs:  # TRL's opt-in vllm_importance_sampling_correction
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        # A row without response tokens (possible only with TRL's masking options) would be 0/0 under
        # masked_mean: it contributes a zero loss instead, still counting in the batch mean.
        empty = mask.sum(dim=1) == 0
        loss_mask = mask
        if empty.any():
            per_token_loss = per_token_loss.masked_fill(empty.unsqueeze(1), 0.0)
            loss_mask = mask.clone()
            loss_mask[empty, 0] = 1
        loss = aggregate_per_token_loss(
            per_token_loss, loss_mask, self.args.length_normalization, self.args.normalize_constant
        )
        metrics = self._metrics["train"]
        metrics["entropy"].append(self._global_masked_mean(entropies, mask))
        if "clipped" in metadata:
            metrics["clip_fraction"].append(self._global_masked_mean(metadata["clipped"].float(), mask))
        if "ratio" in metadata:
            metrics["ratio/mean"].append(self._global_masked_mean(metadata["ratio"], mask))
        return loss / self.current_gradient_accumulation_steps  # an optimizer step sums equal-sized micro-batches

    def _global_masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean of `values` over the masked tokens of all processes."""
        totals = torch.stack([(values.detach() * mask).sum(), mask.sum().float()])
        totals = self.accelerator.reduce(totals, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    # ---------------------------------------------------------------------------------------- validation
    @property
    def grading_pool(self):
        """The validation grader (worker processes started on first use, on the main process)."""
        if self._grading_pool is None:
            self._grading_pool = grading_pool(self.validation_reward_fn)
        return self._grading_pool

    @property
    def rollout_batches_trained(self) -> float:
        """Rollout batches trained so far: the x-axis that compares on- and off-policy runs (logged as rollout_batch)."""
        return self.state.global_step / self.args.steps_per_rollout_batch

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, plus `rollout_batch` (`rollout_batches_trained`)."""
        super().log({**logs, "rollout_batch": self.rollout_batches_trained}, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Validation accuracy of the current policy (module doc); logs and returns `<prefix>_answer_accuracy`...

        Files: <output_dir>/eval/<prefix>-step<N>/ (or <output_dir>/final_eval/ for prefix "final_eval", which a
        relaunch resumes when the policy is the same) with generations.jsonl and summary.json.
        """
        from transformers import Trainer

        problems = self.eval_dataset if eval_dataset is None else eval_dataset
        step, training = self.state.global_step, self.model.training
        final = metric_key_prefix == "final_eval"
        self.model.eval()
        options = {
            "chunk_size": self.args.per_device_eval_batch_size * self.accelerator.num_processes,
            "extra_summary": {"step": step},
            "pool": self.grading_pool if self.accelerator.is_main_process else None,
            "desc": f"{metric_key_prefix} (step {step})",
        }
        output_dir = validation_dir(self.args.output_dir, metric_key_prefix, step)
        fingerprint = {"step": step, "policy": self._policy_fingerprint()} if final else None
        try:
            result = validate(GRPOGenerationSampler(self), self.validation_reward_fn, problems, output_dir,
                              resume=final, fingerprint=fingerprint, **options)
        except EvaluationMismatch as mismatch:  # another policy's partial final validation: start it over
            print(f"{metric_key_prefix}: starting over ({mismatch})", file=sys.stderr)
            result = validate(GRPOGenerationSampler(self), self.validation_reward_fn, problems, output_dir,
                              fingerprint=fingerprint, **options)
        self.model.train(training)
        metrics = {**validation_metrics(result, metric_key_prefix),
                   "rollout_batch": self.rollout_batches_trained}
        # Trainer's log, not GRPOTrainer's: TRL's eval-mode metric buffers and completion tables hold training data.
        Trainer.log(self, metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _policy_fingerprint(self) -> str:
        """A hash of the policy's weights (gathered from every process), to tell whether a partial final
        validation was of this policy."""
        from accelerate.utils import broadcast_object_list

        state_dict = self.accelerator.get_state_dict(self.model)
        digest = None
        if self.accelerator.is_main_process:
            sha = hashlib.sha256()
            for name in sorted(state_dict):
                tensor = state_dict[name].detach().cpu().contiguous()
                sha.update(name.encode())
                sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
            digest = sha.hexdigest()
        return broadcast_object_list([digest], from_process=0)[0]

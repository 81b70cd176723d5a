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
- `_prepare_inputs` lays out each new rollout batch's micro-batches with the length-aware levers
  (trl_math.batching, `length_aware_batching`): trimmed to real tokens, an optimizer step's rows grouped by
  length, rows whose gradient is exactly zero left out; every forward gives each row its own rotary positions
  from 0, as vLLM samples them;
- `_compute_loss` is the assignment's loss: per-token loss from `compute_policy_gradient_loss`, reduced by
  masked_mean or masked_normalize per example, summed over the micro-batch's rows and divided by the configured
  micro-batch size (the micro-batch mean when no row was left out), divided by the number of micro-batches, so
  the update does not depend on how a train batch is cut into micro-batches;
- `training_step` logs entropy, clip fraction, ratio and skipped rows once per optimizer step, from sums over the
  step's micro-batches reduced in one collective (trl_math.step_metrics);
- `evaluate` is validation accuracy (trl_math.validation), not TRL's evaluation loop: one completion per
  validation problem, sampled by the trainer's own generation (`GRPOGenerationSampler`: vLLM colocate or
  server, or transformers, with the policy's current weights) with the validation's sampling (the eval_*
  fields: the assignment's evaluation sampling, seeded), not the rollouts', each problem once however many processes,
  graded with the course's reward for the prompt (`validation_reward_fn`) whatever reward trains, and
  averaged over problems. No policy forward pass is spent on validation.

Old log-probs: computed once per rollout batch, without gradient, when TRL needs them (the rollout batch
serves several optimizer steps); on-policy they equal the detached current log-probs, which is what TRL passes.
With the levers on, the pass runs on the very micro-batches training will run, right after generation, for every
optimizer step but the one in progress: that step's forwards run at the rollout's weights, so their detached
log-probs are its old log-probs (exactly: the same forward), kept for the later epochs. TRL's own pass runs
with the levers off (at TRL's width) and with vllm_importance_sampling_correction, whose ratio needs the old
log-probs at generation (trimmed chunk by chunk, in TRL's order, every row).

Checkpoints appear whole and record the training time, which `max_train_hours` counts over a resumed run
(trl_math.checkpoints); `save_model` writes a model `from_pretrained` loads under every engine, FSDP's sharded
state dicts included (trl_math.model_saving).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import torch
from accelerate.utils import DistributedType
from transformers import GenerationConfig
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import RepeatSampler

from . import batching
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
from .model_saving import FullModelSaveMixin
from .run_log import MetricsLogCallback
from .sampling import Completion, Sampler, SamplingConfig, completion_from_token_ids
from .step_metrics import StepTotals
from .validation import (announce_validation_sampling, validate, validation_dir, validation_metrics,
                         write_validation_problems)

# TRL's generate() settings that are plumbing, not sampling: validation keeps them (MathGRPOTrainer.sampling_as).
_GENERATE_PLUMBING = ("pad_token_id", "bos_token_id", "eos_token_id", "cache_implementation", "suppress_tokens")


class GRPOGenerationSampler(Sampler):
    """MathGRPOTrainer's own generation as a `Sampler` of one completion per prompt, sampling with `sampling` (the
    validation's), not with the rollouts' settings: TRL's vLLM path (colocate or server; weights synced when the
    step changed) or transformers path, driven through `MathGRPOTrainer.sampling_as`.

    Seeds: TRL's generation takes one set of sampling parameters per call, so each call draws from one seed,
    `sampling.seed` + the index of the call's first prompt over all processes, shared by the call's prompts (vLLM
    seeds each of them with it; transformers' generate draws one stream). The same seed, per-process batch and
    process count reproduce the same samples. Every process must call it together (the seed is agreed on, and
    TRL's server mode gathers the prompts of all processes)."""

    def __init__(self, trainer: "MathGRPOTrainer", sampling: SamplingConfig):
        self.trainer, self.sampling = trainer, sampling

    def sample(self, prompts, n=1, request_ids=None):
        from accelerate.utils import gather_object

        if n != 1:
            raise ValueError(f"GRPOGenerationSampler samples one completion per prompt, got n={n}")
        ids = list(range(len(prompts))) if request_ids is None else list(request_ids)
        seed = None
        if self.sampling.seed is not None:
            seed = self.sampling.seed + min(gather_object([ids[0] if ids else float("inf")]))
        trainer = self.trainer
        with trainer.sampling_as(self.sampling, seed):
            prompt_ids, images, multimodal_fields = trainer._tokenize_prompts(list(prompts))
            completion_ids, _ = trainer._generate_single_turn(prompt_ids, images, multimodal_fields, 1)
            return [[trainer.completion(ids)] for ids in completion_ids]


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


class MathGRPOTrainer(ResumableTrainerMixin, FullModelSaveMixin, AssignmentModelCardMixin, GRPOTrainer):
    """GRPO with the assignment's group-normalized advantages, policy-gradient losses and validation (module doc).

    `validation_reward_fn(response, ground_truth)`: the course's reward of the prompt (r1_zero_reward_fn, or
    question_only_reward_fn for the question_only prompt); validation grades with it, whatever `reward_funcs`
    train on. `levers` (trl_math.batching.Levers) sets the length-aware levers one by one instead of
    `args.length_aware_batching` (all or none), as benchmarks/grpo_padding.py does to measure each.
    """

    _tag_names = ["trl", "grpo", "trl-math"]
    _prompt_sampler: EpochSeededRepeatSampler | None = None  # none for an iterable train_dataset
    _name = "MathGRPO"
    assignment_problem = "grpo_train_loop (GRPO experiments)"

    def __init__(self, model, reward_funcs, args: MathGRPOConfig, validation_reward_fn=r1_zero_reward_fn,
                 levers: batching.Levers | None = None, **kwargs):
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
        self._stop_rule = ([] if args.stop_string is None else [args.stop_string], args.min_new_tokens, True)
        self._grading_pool = None
        self._rollouts_trimmed = False
        self.levers = levers if levers is not None else batching.ALL if args.length_aware_batching else batching.NONE
        self._defer_old_log_probs = False  # set while TRL scores a rollout batch whose old log-probs we compute
        self._old_log_probs_needed = False
        metrics = ("entropy", "tokens", "rows") + {"grpo_clip": ("clipped", "ratio"), "grpo_no_clip": ("ratio",)}.get(
            args.loss_type, ())
        self._step_totals = StepTotals(metrics)
        self._micro_batches_in_step = self._rows_in_step = 0  # of the optimizer step in progress, on this process
        if args.max_train_hours is not None:
            self.add_callback(WallClockBudgetCallback(args.max_train_hours, self.training_clock))
        self.add_callback(MetricsLogCallback())  # metrics.jsonl: validation curves against step and time
        if self.accelerator.is_main_process:
            if self.eval_dataset is not None:
                write_validation_problems(self.eval_dataset, args.output_dir)
            announce_validation_sampling(args.eval_sampling())

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
        """A generated completion as vLLM reports it (trl_math.sampling), under the stop rule of the sampling in
        force: the rollouts' (stop_string, min_new_tokens), or `sampling_as`'s."""
        stops, min_tokens, keep_stop = self._stop_rule
        return completion_from_token_ids(ids, self._tokenizer, stops, min_tokens, keep_stop, self.eos_token_ids)

    @contextmanager
    def sampling_as(self, sampling: SamplingConfig, seed: int | None = None):
        """While the block runs, TRL's generation (`_generate_single_turn`) samples with `sampling` and `seed`
        instead of the rollouts' settings, none of which (top_k, min_p, repetition_penalty, generation_kwargs,
        structured outputs included) carries over. TRL's vLLM generation reads its settings from its
        VLLMGeneration, the transformers path from `generation_config`: those are swapped, then restored."""
        if self.use_vllm:
            owner = self.vllm_generation
            settings = {
                "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0, "min_p": 0.0,
                "repetition_penalty": 1.0, "max_completion_length": sampling.max_tokens,
                "structured_outputs_regex": None,
                "generation_kwargs": {"min_tokens": sampling.min_tokens, "stop": list(sampling.stop),
                                      "include_stop_str_in_output": sampling.include_stop_str_in_output, "seed": seed},
            }
        else:
            kwargs = {key: value for key, value in self.generation_kwargs.items() if key in _GENERATE_PLUMBING}
            kwargs |= {"max_new_tokens": sampling.max_tokens, "min_new_tokens": sampling.min_tokens,
                       "do_sample": sampling.temperature > 0}
            if sampling.temperature > 0:
                kwargs |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
            owner = self
            settings = {"generation_config": GenerationConfig(**kwargs, disable_compile=True), "generation_kwargs": kwargs}
        saved = {name: getattr(owner, name) for name in settings}
        saved_rule, self._stop_rule = self._stop_rule, (list(sampling.stop), sampling.min_tokens,
                                                        sampling.include_stop_str_in_output)
        for name, value in settings.items():
            setattr(owner, name, value)
        seeded = seed is not None and not self.use_vllm  # transformers' generate draws from torch's RNG
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices, enabled=seeded):
                if seeded:
                    torch.manual_seed(seed)
                yield
        finally:
            for name, value in saved.items():
                setattr(owner, name, value)
            self._stop_rule = saved_rule

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
        # With the levers on, TRL's old-log-prob pass is left to `_lay_out_rollout_batch`, except with
        # vllm_importance_sampling_correction, whose ratio needs the old log-probs now.
        self._defer_old_log_probs = self.levers.any and not (self.use_vllm and self.vllm_importance_sampling_correction)
        self._old_log_probs_needed = False
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._defer_old_log_probs = False
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

    # -------------------------------------------------------------------------------------- micro-batches
    def _prepare_inputs(self, generation_batch):
        """TRL's rollout buffering, with each new rollout batch's micro-batches laid out by the levers."""
        buffered = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch)
        if not self.model.training:  # TRL's evaluation batch (trl-math's `evaluate` samples without it)
            return batching.micro_batch(inputs, self._tokenizer.pad_token_id, self.levers.trim)
        position = self._step % self.args.steps_per_generation
        if self._buffered_inputs is not buffered:  # TRL generated, shuffled and split a new rollout batch
            current_step = position // self.args.gradient_accumulation_steps
            self._buffered_inputs = self._lay_out_rollout_batch(self._buffered_inputs, current_step)
        return self._buffered_inputs[position]

    def _lay_out_rollout_batch(self, micro_batches: list[dict], current_step: int) -> list[dict]:
        """TRL's micro-batches of a new rollout batch as trl_math.batching lays them out; when TRL needs old log-probs,
        they are computed here, at the rollout's weights, on the laid-out micro-batches of every optimizer step but
        `current_step` (the one in progress, whose own forwards give them: `_compute_loss`)."""
        per_step = self.args.gradient_accumulation_steps
        planned = batching.length_aware_micro_batches(
            micro_batches, per_step, self.levers, self._tokenizer.pad_token_id,
            skippable=lambda rows: batching.zero_gradient_rows(self.args.loss_type, rows),
        )
        if self._old_log_probs_needed:
            with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                for index, batch in enumerate(planned):
                    empty = batch["completion_ids"].size(0) == 0
                    if index // per_step != current_step and (not empty or self._collective_forwards):
                        log_probs, _ = self._forward_micro_batch(self.model, batch)
                        batch["old_per_token_logps"] = log_probs[: batch["completion_ids"].size(0)]
        return planned

    @property
    def _collective_forwards(self) -> bool:
        """Whether every forward must run on every process (DDP's gradient all-reduce in the last backward of a step,
        FSDP's and DeepSpeed's parameter gathers): an empty micro-batch then forwards a placeholder. A single plain
        process skips it, except in a step that forwarded no row (`_compute_loss`)."""
        return self.accelerator.distributed_type != DistributedType.NO

    def _forward_micro_batch(self, model, batch: dict, compute_entropy: bool = False):
        """(log-probs, entropies or None) of each row's completion tokens, (rows, completion width), from one forward
        of a trl_math.batching micro-batch through TRL's fused LM head. An empty micro-batch forwards
        `placeholder_micro_batch` instead, and its one row's values come back."""
        if batch["input_ids"].size(0) == 0:
            batch = batching.placeholder_micro_batch(self._tokenizer.pad_token_id, batch["input_ids"].device)
        with self.accelerator.autocast():
            outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            position_ids=batch["position_ids"], labels=batch["labels"], fused_lm_head=True)
        entropies = batching.completion_values(outputs.entropy, batch) if compute_entropy else None
        return batching.completion_values(outputs.log_probs, batch), entropies

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        """TRL's forward hook, for TRL's own old-log-prob pass: text only, in chunks of `batch_size` rows, each laid
        out by the trim lever with rotary positions from each row's first token (`_forward_micro_batch`). While
        `_defer_old_log_probs` is set it computes nothing and returns Nones (`_lay_out_rollout_batch` will)."""
        if any(value is not None for value in multimodal.values()):
            given = sorted(name for name, value in multimodal.items() if value is not None)
            raise ValueError(f"MathGRPOTrainer trains text-only models; got multimodal inputs {given}")
        if self._defer_old_log_probs:
            self._old_log_probs_needed = True
            return None, None, None
        prompt_width = input_ids.size(1) - logits_to_keep
        rows = {"prompt_ids": input_ids[:, :prompt_width], "prompt_mask": attention_mask[:, :prompt_width],
                "completion_ids": input_ids[:, prompt_width:], "completion_mask": attention_mask[:, prompt_width:]}
        size = batch_size or input_ids.size(0)
        log_probs, entropies = [], []
        for start in range(0, input_ids.size(0), size):
            chunk = {key: value[start : start + size] for key, value in rows.items()}
            values = self._forward_micro_batch(model, batching.micro_batch(chunk, self._tokenizer.pad_token_id,
                                                                           self.levers.trim), compute_entropy)
            log_probs.append(values[0])
            entropies.append(values[1])
        widen = lambda parts: torch.cat([torch.nn.functional.pad(p, (0, logits_to_keep - p.size(1))) for p in parts])
        return widen(log_probs), widen(entropies) if compute_entropy else None, None

    # --------------------------------------------------------------------------------------------- loss
    def _compute_loss(self, model, inputs):
        rows = inputs["completion_ids"].size(0)
        if rows == 0:  # every row was left out
            last = self._micro_batches_in_step + 1 == self.current_gradient_accumulation_steps
            if not self._collective_forwards and not (last and self._rows_in_step == 0):
                return torch.zeros((), device=self.accelerator.device, requires_grad=True)
            # A zero-weighted forward and backward: every process joins the collectives; and a step that forwarded
            # no row leaves zero gradients, not none, so that the optimizer steps as it would on the padded rows.
            placeholder, _ = self._forward_micro_batch(model, inputs)
            return placeholder.sum() * 0.0
        self._rows_in_step += rows
        log_probs, entropies = self._forward_micro_batch(model, inputs, compute_entropy=True)
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
        old_log_probs = inputs.get("old_per_token_logps")
        if old_log_probs is None:  # on-policy, or the optimizer step in progress at generation (module doc)
            old_log_probs = log_probs.detach()
            if self.num_iterations > 1:  # later epochs of this rollout batch revisit this very micro-batch
                inputs["old_per_token_logps"] = old_log_probs
        per_token_loss, metadata = compute_policy_gradient_loss(
            log_probs,
            self.args.loss_type,
            raw_rewards=inputs["raw_rewards"].unsqueeze(1),
            advantages=inputs["advantages"].unsqueeze(1),
            old_log_probs=old_log_probs,
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
        if rows != self.args.per_device_train_batch_size:  # rows left out (exact zeros) still count in the mean
            loss = loss * (rows / self.args.per_device_train_batch_size)
        totals = {"entropy": (entropies * mask).sum(), "tokens": mask.sum(), "rows": mask.new_tensor(rows)}
        if "clipped" in metadata:
            totals["clipped"] = (metadata["clipped"] * mask).sum()
        if "ratio" in metadata:
            totals["ratio"] = (metadata["ratio"] * mask).sum()
        self._step_totals.add(**totals)
        return loss / self.current_gradient_accumulation_steps  # an optimizer step sums equal-sized micro-batches

    def training_step(self, model, inputs, num_items_in_batch):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._micro_batches_in_step += 1
        if self._micro_batches_in_step == self.current_gradient_accumulation_steps:
            self._micro_batches_in_step = self._rows_in_step = 0
            self._log_step_totals()
        return loss

    def _log_step_totals(self) -> None:
        """The optimizer step's metrics, over the response tokens of the rows it forwarded on all processes (one
        collective): entropy, and for grpo_clip / grpo_no_clip clip_fraction and ratio/mean (rows left out by the
        skip lever are not among them); skipped_rows, the rows of the step that no forward needed."""
        totals = self._step_totals.reduce(self.accelerator)
        metrics = self._metrics["train"]
        configured = (self.args.per_device_train_batch_size * self.current_gradient_accumulation_steps
                      * self.accelerator.num_processes)
        metrics["skipped_rows"].append(configured - totals["rows"])
        if totals["tokens"] > 0:
            metrics["entropy"].append(totals["entropy"] / totals["tokens"])
            for name, key in (("clipped", "clip_fraction"), ("ratio", "ratio/mean")):
                if name in totals:
                    metrics[key].append(totals[name] / totals["tokens"])

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
        relaunch resumes when the policy is the same) with generations.jsonl and summary.json. A SIGTERM stops it
        between chunks at a resume boundary (trl_math.preemption); the relaunch resumes it.
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
        fingerprint = {"step": step, **({"policy": self.policy_fingerprint()} if final else {})}
        sampling = self.args.eval_sampling()
        sampler = GRPOGenerationSampler(self, sampling)
        options["safe_point"] = self.validation_safe_point(final)
        try:
            result = validate(sampler, sampling, self.validation_reward_fn, problems, output_dir,
                              resume=final or self.resuming_validation, fingerprint=fingerprint, **options)
        except EvaluationMismatch as mismatch:  # another policy's partial final validation: start it over
            print(f"{metric_key_prefix}: starting over ({mismatch})", file=sys.stderr)
            result = validate(sampler, sampling, self.validation_reward_fn, problems, output_dir,
                              fingerprint=fingerprint, **options)
        self.model.train(training)
        metrics = {**validation_metrics(result, metric_key_prefix),
                   "rollout_batch": self.rollout_batches_trained}
        # Trainer's log, not GRPOTrainer's: TRL's eval-mode metric buffers and completion tables hold training data.
        Trainer.log(self, metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

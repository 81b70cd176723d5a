"""MathGRPOTrainer: TRL's GRPOTrainer with the assignment's advantages and loss, nothing else.

Overridden hooks, each calling TRL for everything it does not change:

- `_calculate_rewards` keeps the rewards TRL gathered from all processes, so that
- `_generate_and_score_completions` can replace TRL's advantages with `normalize_group_rewards` on whole
  groups of the gathered rewards (the assignment's compute_group_normalized_rewards), slice back this
  process's rows, and carry the raw rewards to the loss (no_baseline needs them);
- `_generate_single_turn` cuts transformers-generate completions after the stop string (vLLM stops itself);
- `_compute_loss` is the assignment's loss: per-token loss from `compute_policy_gradient_loss`, reduced by
  masked_mean or masked_normalize per example, averaged over the micro-batch, divided by the number of
  micro-batches, so the update does not depend on how a train batch is cut into micro-batches;
- `prediction_step`: validation only generates and scores (its metrics); there is no loss to take.

Old log-probs are TRL's: computed once per rollout batch, without gradient, when the rollout batch is
reused (off-policy); on-policy they equal the detached current log-probs, which is what TRL passes.
"""

from __future__ import annotations

import json
import os

import torch
from trl import GRPOTrainer

from .advantages import normalize_group_rewards
from .callbacks import WallClockBudgetCallback
from .grpo_config import MathGRPOConfig
from .losses import aggregate_per_token_loss, compute_policy_gradient_loss
from .model_card import AssignmentModelCardMixin
from .run_log import MetricsLogCallback
from .stopping import find_stop


def truncate_at_stop_string(completion_ids: list[int], tokenizer, stop: str, min_tokens: int = 0) -> list[int]:
    """The completion up to and including the token that completes the first `stop` (as vLLM's stop=[...],
    include_stop_str_in_output=True): an occurrence completed before `min_tokens` tokens does not stop it."""
    match = find_stop(completion_ids, tokenizer, [stop], min_tokens)
    return list(completion_ids if match is None else completion_ids[: match.tokens])


class MathGRPOTrainer(AssignmentModelCardMixin, GRPOTrainer):
    """GRPO with the assignment's group-normalized advantages and policy-gradient losses (see the module doc)."""

    _tag_names = ["trl", "grpo", "trl-math"]
    _name = "MathGRPO"
    assignment_problem = "grpo_train_loop (GRPO experiments)"

    def __init__(self, model, reward_funcs, args: MathGRPOConfig, **kwargs):
        if not isinstance(args, MathGRPOConfig):
            raise TypeError(f"MathGRPOTrainer needs a MathGRPOConfig, got {type(args).__name__}")
        if args.reward_weights is None:  # e.g. make_trl_reward_funcs: answer 1.0, format 0.0 (logged only)
            funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
            args.reward_weights = [float(getattr(f, "default_weight", 1.0)) for f in funcs]
        super().__init__(model, reward_funcs, args, **kwargs)
        # MathGRPOConfig.train_batch_size (the assignment's: rollouts per optimizer step over all processes)
        # shadows TrainingArguments.train_batch_size (per device), which Trainer copied: restore the latter.
        self._train_batch_size = args.per_device_train_batch_size * max(1, args.n_gpu)
        if args.max_train_hours is not None:
            self.add_callback(WallClockBudgetCallback(args.max_train_hours))
        self.add_callback(MetricsLogCallback())  # metrics.jsonl: validation curves against step and time

    # ----------------------------------------------------------------------------------------- rollouts
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        completion_ids, logprobs = super()._generate_single_turn(
            prompt_ids, images, multimodal_fields, num_generations, has_tool_images
        )
        if not self.use_vllm and self.args.stop_string is not None:
            completion_ids = [
                truncate_at_stop_string(ids, self._tokenizer, self.args.stop_string, self.args.min_new_tokens)
                for ids in completion_ids
            ]
        return completion_ids, logprobs

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards_per_func = rewards_per_func  # (all processes' completions, reward functions)
        return rewards_per_func

    # --------------------------------------------------------------------------------------- advantages
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
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
        if mode == "train":
            advantages = normalize_group_rewards(
                rewards, self.num_generations, self.args.advantage_eps, self.args.use_std_normalization
            )
            output["advantages"] = advantages[local]
            logged = self._logs["advantages"]  # TRL logged its own advantages for the completions table
            for _ in range(min(len(logged), len(advantages))):
                logged.pop()
            logged.extend(advantages.tolist())
        self._log_response_lengths(mode, output["completion_mask"], rewards)
        if self.args.log_rollouts:
            self._write_rollouts(mode, inputs, output, local)
        return output

    def _log_response_lengths(self, mode, completion_mask, rewards):
        """Mean response length of correct (reward > 0) and incorrect completions, over all processes."""
        lengths = self.accelerator.gather(completion_mask.sum(dim=1)).float()
        correct = rewards > 0
        for name, selected in (("correct", correct), ("incorrect", ~correct)):
            value = lengths[selected].mean().item() if selected.any() else float("nan")
            self._metrics[mode][f"completions/mean_length_{name}"].append(value)

    def _write_rollouts(self, mode, inputs, output, local):
        completions = self.processing_class.batch_decode(
            [ids[mask.bool()] for ids, mask in zip(output["completion_ids"], output["completion_mask"])]
        )
        path = os.path.join(self.args.output_dir, "rollouts", f"rank{self.accelerator.process_index}.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            for offset, (example, completion) in enumerate(zip(inputs, completions)):
                row = {
                    "mode": mode,
                    "step": self.state.global_step,
                    "index": local.start + offset,
                    "prompt": example["prompt"],
                    "completion": completion,
                    "reward": output["raw_rewards"][offset].item(),
                    "advantage": output["advantages"][offset].item(),
                }
                handle.write(json.dumps(row) + "\n")

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
        if self.use_vllm and self.vllm_importance_sampling_correction:  # TRL's opt-in extra
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
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["entropy"].append(self._global_masked_mean(entropies, mask))
        if "clipped" in metadata:
            self._metrics[mode]["clip_fraction"].append(self._global_masked_mean(metadata["clipped"].float(), mask))
        if "ratio" in metadata:
            self._metrics[mode]["ratio/mean"].append(self._global_masked_mean(metadata["ratio"], mask))
        if mode == "train":  # one optimizer step sums the equal-sized micro-batches' losses
            loss = loss / self.current_gradient_accumulation_steps
        return loss

    def _global_masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean of `values` over the masked tokens of all processes."""
        totals = torch.stack([(values.detach() * mask).sum(), mask.sum().float()])
        totals = self.accelerator.reduce(totals, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys: list[str] | None = None):
        """Validation generates and scores completions (logged as eval metrics); it computes no loss."""
        self._prepare_inputs(inputs)
        return None, None, None

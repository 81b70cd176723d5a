"""MathGRPOConfig: the assignment's GRPO knobs, mapped onto TRL's GRPOConfig.

The assignment speaks in rollout batches, groups, train batches and micro-batches; TRL speaks in
generations per prompt, generation batches, iterations and per-device batches. `__post_init__` derives
TRL's fields from ours (table below), raises the assignment's sanity checks as errors naming the fields,
and pins every TRL default that would silently change the assignment's objective.

| assignment field            | TRL field                                                                  |
|-----------------------------|----------------------------------------------------------------------------|
| group_size                  | num_generations                                                            |
| rollout_batch_size          | generation_batch_size (steps_per_generation is derived by TRL)             |
| epochs_per_rollout_batch    | num_iterations                                                             |
| train_batch_size            | per_device_train_batch_size * world_size * gradient_accumulation_steps     |
| gradient_accumulation_steps | gradient_accumulation_steps (micro-batches per optimizer step per process) |
| cliprange                   | epsilon (symmetric; epsilon_high unset)                                    |
| use_std_normalization       | scale_rewards ("group" or "none")                                          |
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

from trl import GRPOConfig

from .losses import LENGTH_NORMALIZATIONS, LOSS_TYPES
from .resume import RESUME_HELP
from .validation import ValidationSamplingArguments

# TRL's defaults for the fields we derive: a value other than these (and other than ours) was set by the user.
_TRL_DERIVED_DEFAULTS = {
    "num_generations": 8,
    "generation_batch_size": None,
    "steps_per_generation": None,
    "num_iterations": 1,
    "per_device_train_batch_size": 8,
    "epsilon": 0.2,
    "scale_rewards": "group",
}

# TRL loss extras that our loss (the assignment's) does not implement, with the value that disables each.
_UNSUPPORTED_LOSS_OPTIONS = {
    "beta": 0.0,
    "top_entropy_quantile": 1.0,
    "off_policy_mask_threshold": None,
    "entropy_coef": 0.0,
    "use_adaptive_entropy": False,
    "importance_sampling_level": "token",
    "delta": None,
    "epsilon_high": None,
    "sync_ref_model": False,
    "multi_objective_aggregation": "sum_then_normalize",
    "mask_truncated_completions": False,
}


@dataclass
class MathGRPOConfig(GRPOConfig, ValidationSamplingArguments):
    r"""GRPOConfig with the assignment's loss, advantage and batch knobs; defaults are the assignment's.

    TRL defaults that change the objective are overridden here: loss_type (TRL: "dapo"), the advantage
    epsilon (TRL: 1e-4 hard-coded), vllm_importance_sampling_correction (TRL: True), the learning-rate
    schedule (TRL: linear decay), betas (TRL: 0.999), logging every step (TRL: every 10).

    Validation samples with the eval_* fields (ValidationSamplingArguments: the assignment's evaluation sampling
    by default, seeded with eval_seed), not with the rollouts' temperature, top_p, top_k, min_p,
    repetition_penalty, max_completion_length, stop_string, min_new_tokens or generation_kwargs.
    """

    # The assignment's loss
    loss_type: str = field(
        default="reinforce_with_baseline",
        metadata={
            "help": "Per-token policy-gradient loss: 'no_baseline' (-R log p), 'reinforce_with_baseline' (-A log p), "
            "'grpo_clip' (-min(ratio A, clip(ratio) A)) or 'grpo_no_clip' (-ratio A). Replaces TRL's loss_type."
        },
    )
    length_normalization: str = field(
        default="masked_mean",
        metadata={
            "help": "Per-example reduction of the per-token loss: 'masked_mean' (mean over response tokens) or "
            "'masked_normalize' (sum over response tokens / normalize_constant). The batch mean follows."
        },
    )
    normalize_constant: float | None = field(
        default=None,
        metadata={"help": "Divisor of masked_normalize. None: max_completion_length."},
    )
    use_std_normalization: bool = field(
        default=True,
        metadata={"help": "Divide group-centred rewards by the group's (unbiased) std + advantage_eps."},
    )
    advantage_eps: float = field(
        default=1e-6, metadata={"help": "Added to the group std before dividing (the assignment uses 1e-6)."}
    )
    cliprange: float = field(default=0.2, metadata={"help": "GRPO-Clip epsilon: ratios are clipped to [1-c, 1+c]."})

    # The assignment's batch knobs
    rollout_batch_size: int = field(
        default=256, metadata={"help": "Rollouts (completions) sampled per rollout batch, over all processes."}
    )
    group_size: int = field(default=8, metadata={"help": "Completions sampled per prompt (a group)."})
    train_batch_size: int = field(
        default=256,
        metadata={"help": "Rollouts per optimizer step, over all processes. Equal to rollout_batch_size: on-policy."},
    )
    epochs_per_rollout_batch: int = field(
        default=1, metadata={"help": "Passes over each rollout batch (1: on-policy; more: off-policy)."}
    )
    gradient_accumulation_steps: int = field(
        default=128,
        metadata={
            "help": "Micro-batches per optimizer step on each process (micro-batch size = train_batch_size / "
            "(gradient_accumulation_steps * world size)). The update does not depend on it."
        },
    )

    length_aware_batching: bool = field(
        default=True,
        metadata={
            "help": "Train on real tokens only (trl_math.batching): each micro-batch trimmed to its own rows' tokens, "
            "an optimizer step's rows grouped by length, rows whose gradient is exactly zero (advantage 0; raw reward "
            "0 for no_baseline) not forwarded, old log-probs of the optimizer step in progress at generation taken "
            "from its own forward. The update is the same up to float reassociation. False: TRL's padded "
            "micro-batches, for comparison and debugging."
        },
    )

    # Rollouts as the assignment samples them
    stop_string: str | None = field(
        default="</answer>",
        metadata={"help": "Generation stops once the completion contains this string, which is kept. None: no stop."},
    )
    min_new_tokens: int = field(
        default=4, metadata={"help": "Fewest tokens sampled per completion (no empty responses)."}
    )
    max_completion_length: int | None = field(default=1024, metadata={"help": "Most tokens sampled per completion."})

    # Run control and debugging
    resume: bool = field(default=True, metadata={"help": RESUME_HELP})
    max_train_hours: float | None = field(
        default=None,
        metadata={
            "help": "Wall-clock budget of training: training stops before the next optimizer step would exceed it "
            "(the leaderboard's 4 hours). A resumed run counts the training time of its earlier segments, as "
            "recorded in its checkpoint. None: no budget."
        },
    )
    eval_rollout_batches: int | None = field(
        default=None,
        metadata={
            "help": "Validate every N rollout batches: sets eval_steps to N x the optimizer steps of a rollout batch, so "
            "on- and off-policy runs validate equally often (and plot against `rollout_batch`). None: eval_steps rules."
        },
    )
    log_rollouts: bool = field(
        default=False,
        metadata={
            "help": "Append every rollout (prompt, completion, reward, advantage) to "
            "<output_dir>/rollouts/rank<k>.jsonl, one file per process."
        },
    )

    # TRL / TrainingArguments fields whose defaults we change to the assignment's
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate (the assignment: 1e-5)."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (the assignment: betas (0.9, 0.95))."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Learning-rate schedule (the assignment: constant)."}
    )
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps (the assignment: 200 GRPO steps)."})
    logging_steps: float = field(default=1, metadata={"help": "Log metrics every N optimizer steps."})
    vllm_gpu_memory_utilization: float = field(
        default=0.85, metadata={"help": "GPU memory fraction of colocated vLLM (the assignment: 0.85)."}
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={
            "help": "TRL's correction of the vLLM / policy log-prob mismatch (not in the assignment; opt-in). "
            "When on, the per-token loss is multiplied by TRL's importance-sampling ratio."
        },
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Disable dropout, so that old and current log-probs agree on-policy."}
    )
    num_generations_eval: int | None = field(
        default=1, metadata={"help": "Completions per validation problem: validation accuracy samples 1 (fixed)."}
    )
    per_device_eval_batch_size: int = field(
        default=32,
        metadata={"help": "Validation problems each process samples per generation call (each call draws from one "
                  "seed: eval_seed + the index of the call's first problem)."},
    )
    log_completions: bool = field(
        default=True, metadata={"help": "Log a sample of (prompt, completion, reward) rows, in training and validation."}
    )
    num_completions_to_print: int | None = field(default=4, metadata={"help": "Completions printed per log."})

    # The resume check (trl_math.resume) leaves out TRL's fields derived from ours: their sources are checked, and
    # the per-device batch follows the world size, which a relaunch may change (train_batch_size is the total).
    derived_fields: ClassVar[tuple[str, ...]] = tuple(_TRL_DERIVED_DEFAULTS)

    @property
    def steps_per_rollout_batch(self) -> int:
        """Optimizer steps per rollout batch: rollout_batch_size / train_batch_size x epochs_per_rollout_batch."""
        return self.rollout_batch_size // self.train_batch_size * self.epochs_per_rollout_batch

    def __post_init__(self):
        self._check_assignment_fields()
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self._map_derived_fields(world_size)
        if self.eval_rollout_batches is not None:
            steps = self.eval_rollout_batches * self.steps_per_rollout_batch
            if self.eval_steps is not None and self.eval_steps != steps:
                raise ValueError(f"MathGRPOConfig: eval_steps, eval_rollout_batches: eval_steps ({self.eval_steps}) "
                                 f"differs from eval_rollout_batches x {self.steps_per_rollout_batch} optimizer steps "
                                 f"per rollout batch ({steps}); set one of them")
            self.eval_steps = steps
        if self.normalize_constant is None:
            self.normalize_constant = float(self.max_completion_length)
        self.generation_kwargs = self._generation_kwargs()
        super().__post_init__()
        if self.world_size != world_size:
            raise ValueError(
                f"world size {self.world_size} differs from WORLD_SIZE={world_size} used to derive "
                "per_device_train_batch_size from train_batch_size; launch with accelerate or torchrun"
            )

    def _check_assignment_fields(self):
        def fail(fields: str, message: str):
            raise ValueError(f"MathGRPOConfig: {fields}: {message}")

        if self.loss_type not in LOSS_TYPES:
            fail("loss_type", f"{self.loss_type!r} is not one of {LOSS_TYPES}")
        if self.length_normalization not in LENGTH_NORMALIZATIONS:
            fail("length_normalization", f"{self.length_normalization!r} is not one of {LENGTH_NORMALIZATIONS}")
        if self.normalize_constant is not None and not self.normalize_constant > 0:
            fail("normalize_constant", f"must be > 0, got {self.normalize_constant}")
        if not self.advantage_eps >= 0:
            fail("advantage_eps", f"must be >= 0, got {self.advantage_eps}")
        if not self.cliprange > 0:
            fail("cliprange", f"must be > 0, got {self.cliprange}")
        for name in ("rollout_batch_size", "group_size", "train_batch_size", "epochs_per_rollout_batch",
                     "gradient_accumulation_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, f"must be a positive integer, got {getattr(self, name)!r}")
        if self.group_size < 2:
            fail("group_size", f"must be >= 2 (a group's std needs two rewards), got {self.group_size}")
        if self.train_batch_size % self.gradient_accumulation_steps:
            fail("train_batch_size, gradient_accumulation_steps",
                 f"train_batch_size ({self.train_batch_size}) must be divisible by gradient_accumulation_steps "
                 f"({self.gradient_accumulation_steps})")
        if self.rollout_batch_size % self.group_size:
            fail("rollout_batch_size, group_size",
                 f"rollout_batch_size ({self.rollout_batch_size}) must be divisible by group_size ({self.group_size})")
        if self.train_batch_size < self.group_size:
            fail("train_batch_size, group_size",
                 f"train_batch_size ({self.train_batch_size}) must be >= group_size ({self.group_size})")
        if self.rollout_batch_size % self.train_batch_size:
            fail("rollout_batch_size, train_batch_size",
                 f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of train_batch_size "
                 f"({self.train_batch_size}): each optimizer step uses rollouts of one rollout batch")
        if self.max_completion_length is None or self.max_completion_length < self.min_new_tokens:
            fail("max_completion_length, min_new_tokens",
                 f"max_completion_length ({self.max_completion_length}) must be >= min_new_tokens ({self.min_new_tokens})")
        steps_per_rollout_batch = self.steps_per_rollout_batch
        if getattr(self.save_strategy, "value", self.save_strategy) == "steps" and self.save_steps >= 1 and \
                self.save_steps % steps_per_rollout_batch:
            warnings.warn(
                f"MathGRPOConfig: save_steps ({self.save_steps}) is not a multiple of the {steps_per_rollout_batch} "
                "optimizer steps of a rollout batch (rollout_batch_size / train_batch_size x epochs_per_rollout_batch): "
                "TRL regenerates rollouts on resume, so a run resumed from such a checkpoint finishes that rollout "
                "batch's steps on fresh rollouts and differs from an uninterrupted run", stacklevel=3)
        if self.eval_rollout_batches is not None and self.eval_rollout_batches < 1:
            fail("eval_rollout_batches", f"must be a positive integer or None, got {self.eval_rollout_batches}")
        if self.num_generations_eval != 1:
            fail("num_generations_eval", f"validation accuracy samples one completion per problem; got "
                 f"{self.num_generations_eval}")
        if self.max_train_hours is not None and not self.max_train_hours > 0:
            fail("max_train_hours", f"must be > 0, got {self.max_train_hours}")
        self.check_eval_sampling()
        for name, off in _UNSUPPORTED_LOSS_OPTIONS.items():
            if getattr(self, name) != off:
                fail(name, f"{getattr(self, name)!r} is a TRL loss option that MathGRPOTrainer's loss (the "
                     f"assignment's) does not implement; leave it at {off!r}")

    def _map_derived_fields(self, world_size: int):
        if self.train_batch_size % (self.gradient_accumulation_steps * world_size):
            raise ValueError(
                f"MathGRPOConfig: train_batch_size, gradient_accumulation_steps: train_batch_size ({self.train_batch_size}) "
                f"must be divisible by gradient_accumulation_steps ({self.gradient_accumulation_steps}) x world size "
                f"({world_size})"
            )
        derived = {
            "num_generations": self.group_size,
            "generation_batch_size": self.rollout_batch_size,
            "steps_per_generation": None,
            "num_iterations": self.epochs_per_rollout_batch,
            "per_device_train_batch_size": self.train_batch_size // (self.gradient_accumulation_steps * world_size),
            "epsilon": self.cliprange,
            "scale_rewards": "group" if self.use_std_normalization else "none",
        }
        source = {
            "num_generations": "group_size",
            "generation_batch_size": "rollout_batch_size",
            "steps_per_generation": "rollout_batch_size and train_batch_size",
            "num_iterations": "epochs_per_rollout_batch",
            "per_device_train_batch_size": "train_batch_size and gradient_accumulation_steps",
            "epsilon": "cliprange",
            "scale_rewards": "use_std_normalization",
        }
        for name, value in derived.items():
            current = getattr(self, name)
            if name == "scale_rewards":  # TRL also accepts booleans
                current = {True: "group", False: "none"}.get(current, current)
            if current not in (_TRL_DERIVED_DEFAULTS[name], value):
                raise ValueError(
                    f"MathGRPOConfig: {name}: is derived from {source[name]} (would be {value}); "
                    f"do not set it (got {current})"
                )
            setattr(self, name, value)

    def _generation_kwargs(self) -> dict:
        user = self.generation_kwargs or {}
        if isinstance(user, str):
            user = json.loads(user)
        if self.use_vllm:
            ours = {"min_tokens": self.min_new_tokens}
            if self.stop_string is not None:
                ours |= {"stop": [self.stop_string], "include_stop_str_in_output": True}
        else:  # the stop string is applied by MathGRPOTrainer on this path (generate() has no tokenizer)
            ours = {"min_new_tokens": self.min_new_tokens}
        for key, value in ours.items():
            if key in user and user[key] != value:
                raise ValueError(
                    f"MathGRPOConfig: generation_kwargs[{key!r}]: {user[key]!r} conflicts with {value!r} set from "
                    "stop_string / min_new_tokens; set those fields instead"
                )
        return {**user, **ours}

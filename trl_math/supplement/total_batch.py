"""Batch sizes as the supplement states them: per optimizer step, over every process.

The supplement asks for "a total batch size of 32 sequences per gradient step" (instruction tuning) and "a batch
size of 64" pairs (DPO). Trainer counts per process: `per_device_train_batch_size x gradient_accumulation_steps`
sequences on each, so the same config on two GPUs would take twice the course's batch. A config with the
`TotalTrainBatch` mixin holds the total in `total_train_batch_size` (transformers' own name for it in its
"Total train batch size" log line) and derives the micro-batch from the launch's process count, as
MathGRPOConfig derives its own from `train_batch_size`:

    per_device_train_batch_size = total_train_batch_size / (gradient_accumulation_steps x processes)

A total that does not divide is an error naming the fields; so is a per_device_train_batch_size set to another
value. (The field is not called `train_batch_size`: that name is a TrainingArguments property, the per-device
batch, which Trainer reads to build its dataloader.)
"""

from __future__ import annotations

import os

PER_DEVICE_HELP = ("Derived: total_train_batch_size / (gradient_accumulation_steps x processes). Leave it unset; "
                   "set total_train_batch_size and gradient_accumulation_steps instead.")


class TotalTrainBatch:
    """Mixin for a TrainingArguments dataclass that declares `total_train_batch_size` and a
    `per_device_train_batch_size` defaulting to None (see the module doc); list it before the TRL config."""

    # The resume check (trl_math.resume) holds the total; the per-device batch follows the process count, which a
    # relaunch may change.
    derived_fields = ("per_device_train_batch_size",)

    def __post_init__(self):
        name = type(self).__name__
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        total, accumulation = self.total_train_batch_size, self.gradient_accumulation_steps
        for field_name, value in (("total_train_batch_size", total), ("gradient_accumulation_steps", accumulation)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {field_name}: must be a positive integer, got {value!r}")
        if total % (accumulation * processes):
            raise ValueError(
                f"{name}: total_train_batch_size, gradient_accumulation_steps: total_train_batch_size ({total}) must be "
                f"divisible by gradient_accumulation_steps ({accumulation}) x processes ({processes}), the micro-batch "
                "being the quotient; change gradient_accumulation_steps"
            )
        derived = total // (accumulation * processes)
        if self.per_device_train_batch_size not in (None, derived):
            raise ValueError(
                f"{name}: per_device_train_batch_size: is derived from total_train_batch_size / "
                f"(gradient_accumulation_steps x processes) = {derived}; do not set it (got "
                f"{self.per_device_train_batch_size})"
            )
        self.per_device_train_batch_size = derived
        super().__post_init__()
        if self.world_size != processes:
            raise ValueError(
                f"{name}: world size {self.world_size} differs from WORLD_SIZE={processes}, from which "
                "per_device_train_batch_size was derived; launch with accelerate or torchrun"
            )

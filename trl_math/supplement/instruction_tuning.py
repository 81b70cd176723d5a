"""InstructionTuningConfig and InstructionTuningTrainer: TRL's SFTTrainer on the course's packed chunks (problem sft).

Why a subclass: SFTTrainer takes only `datasets.Dataset`s, and it shifts the `labels` it is given by one
position (its fused LM head scores hidden state t against labels[t + 1]). A `PackedSFTDataset` example
already holds the next tokens as its labels: passed as `labels`, they would be shifted twice and the model
trained to predict the token after next. So the trainer

- wraps each PackedSFTDataset in a Dataset of chunk indices and batches them with `PackedChunkCollator`,
  which stacks the chunks and hands their labels to the model as `shift_labels` (scored as they are);
- leaves the loss to SFTTrainer: the mean cross-entropy over every token of the micro-batch's chunks (no
  padding, no prompt mask: the course trains on whole documents), divided by gradient_accumulation_steps
  by Trainer, as the course's gradient accumulation does. Logged: `loss`, `eval_loss` (validation chunks
  packed the same way), TRL's `mean_token_accuracy` and `entropy`, and <output_dir>/metrics.jsonl.

InstructionTuningConfig is SFTConfig with the course's hyperparameters as defaults; its batch is the total over
processes, 32 sequences per optimizer step whatever the GPU count (`total_batch`). TRL's own dataset
preparation is skipped, and the TRL options that would act on it are rejected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from trl import SFTConfig, SFTTrainer

from ..checkpoints import ResumableTrainerMixin
from ..model_card import AssignmentModelCardMixin
from ..model_saving import FullModelSaveMixin
from ..resume import RESUME_HELP
from ..run_log import MetricsLogCallback
from .instruction_data import PackedSFTDataset
from .total_batch import PER_DEVICE_HELP, TotalTrainBatch

# TRL options that act on the dataset preparation or labels this trainer replaces, with the only value accepted.
_UNSUPPORTED_TRL_OPTIONS = {
    "packing": False,
    "eval_packing": None,
    "padding_free": False,
    "completion_only_loss": None,
    "assistant_only_loss": False,
    "loss_type": "nll",
    "label_smoothing_factor": 0.0,
    "max_length": None,
}


@dataclass
class InstructionTuningConfig(TotalTrainBatch, SFTConfig):
    """SFTConfig with the course's instruction-tuning defaults (section 3.2.2, problem sft); see the module doc."""

    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate (the course: 2e-5)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (the course: cosine decay)."})
    warmup_steps: float = field(
        default=0.03, metadata={"help": "Linear warmup: a number of steps, or a fraction of them below 1 (the course: 3%)."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the packed chunks (the course: one)."})
    total_train_batch_size: int = field(
        default=32,
        metadata={"help": "Sequences per optimizer step, over all processes (the course: a total batch size of 32)."},
    )
    gradient_accumulation_steps: int = field(
        default=16,
        metadata={"help": "Micro-batches per optimizer step on each process: 16 gives micro-batches of 2 sequences on "
                  "one GPU (the course's, on an 80 GB GPU with bf16 and FlashAttention-2), of 1 on two."},
    )
    per_device_train_batch_size: int | None = field(default=None, metadata={"help": PER_DEVICE_HELP})
    max_length: int | None = field(
        default=None, metadata={"help": "Not used: sequences are the packed chunks, of InstructionDataArguments.seq_length."}
    )
    resume: bool = field(default=True, metadata={"help": RESUME_HELP})

    def __post_init__(self):
        for name, accepted in _UNSUPPORTED_TRL_OPTIONS.items():
            if getattr(self, name) != accepted:
                raise ValueError(
                    f"InstructionTuningConfig: {name}: {getattr(self, name)!r} acts on TRL's dataset preparation or "
                    f"labels, which the packed chunks replace; leave it at {accepted!r}"
                )
        user = json.loads(self.dataset_kwargs) if isinstance(self.dataset_kwargs, str) else self.dataset_kwargs
        self.dataset_kwargs = {**(user or {}), "skip_prepare_dataset": True}
        super().__post_init__()


@dataclass
class PackedChunkCollator:
    """Batches rows {split, chunk} into the model inputs of those chunks of `packed[split]`: input_ids,
    attention_mask (all ones) and the chunks' labels as `shift_labels`, the next tokens, not to be shifted again."""

    packed: dict[str, PackedSFTDataset]

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        chunks = [self.packed[row["split"]][row["chunk"]] for row in rows]
        input_ids = torch.stack([chunk["input_ids"] for chunk in chunks])
        shift_labels = torch.stack([chunk["labels"] for chunk in chunks])
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "shift_labels": shift_labels}


def _chunk_rows(split: str, packed: PackedSFTDataset):
    from datasets import Dataset

    return Dataset.from_dict({"split": [split] * len(packed), "chunk": list(range(len(packed)))})


class InstructionTuningTrainer(ResumableTrainerMixin, FullModelSaveMixin, AssignmentModelCardMixin, SFTTrainer):
    """SFTTrainer on PackedSFTDataset chunks, labels taken as next tokens (see the module doc).

    `train_dataset` / `eval_dataset`: PackedSFTDataset (e.g. `InstructionDataArguments.load_packed`);
    `processing_class`: the tokenizer that packed them, saved with the model.
    """

    _tag_names = ["trl", "sft", "trl-math"]
    _name = "InstructionTuning"
    assignment_problem = "sft"

    def __init__(
        self,
        model,
        args: InstructionTuningConfig,
        train_dataset: PackedSFTDataset,
        eval_dataset: PackedSFTDataset | None = None,
        processing_class=None,
        **kwargs,
    ):
        if not isinstance(args, InstructionTuningConfig):
            raise TypeError(f"InstructionTuningTrainer needs an InstructionTuningConfig, got {type(args).__name__}")
        packed = {"train": train_dataset} if eval_dataset is None else {"train": train_dataset, "eval": eval_dataset}
        for split, dataset in packed.items():
            if not isinstance(dataset, PackedSFTDataset):
                raise TypeError(f"{split}_dataset: expected a PackedSFTDataset, got {type(dataset).__name__}")
        super().__init__(
            model,
            args=args,
            data_collator=PackedChunkCollator(packed),
            train_dataset=_chunk_rows("train", train_dataset),
            eval_dataset=None if eval_dataset is None else _chunk_rows("eval", eval_dataset),
            processing_class=processing_class,
            **kwargs,
        )
        self.add_callback(MetricsLogCallback())

    def _set_signature_columns_if_needed(self):
        # The collator reads the chunk indices; Trainer would drop every column the model does not take.
        if self._signature_columns is None:
            self._signature_columns = ["split", "chunk"]

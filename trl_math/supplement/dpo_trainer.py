"""AlpacaDPOConfig and AlpacaDPOTrainer: TRL's DPOTrainer with the course's DPO (problem dpo_training).

What TRL 1.16's DPOTrainer already does as the course does, and is left to it: the sigmoid loss
-log sigmoid(beta * delta) (loss_type "sigmoid", beta 0.1); delta from log-probabilities summed over the
response tokens with EOS appended; the mean over a micro-batch, which Trainer divides by
gradient_accumulation_steps (the course's accumulation); the classification accuracy of the implicit reward
beta * log(pi_theta / pi_ref), chosen above rejected (logged as `rewards/accuracies`, on validation
`eval_rewards/accuracies`). TRL scores only the tokens after the longest token prefix that the prompt
shares with both documents; the course scores whole documents. The prefix's terms are the same for the
chosen and the rejected document under each model and cancel in delta, so the losses are equal (tested
against `compute_per_instance_dpo_loss`).

What differs, and what this subclass does instead:
- formatting: TRL concatenates a dataset's `prompt` and responses as they are. AlpacaDPOTrainer takes
  {instruction, chosen, rejected} pairs (`load_hh`) and writes each prompt with the Alpaca template, so
  that it trains on the documents `compute_per_instance_dpo_loss` scores;
- the reference model's device: TRL puts it on the policy's. With `ref_model_device` (the course's
  layout: policy on cuda:0, reference on cuda:1, one process) the reference runs there, its inputs moved
  to it and its log-probabilities brought back. It passes through the policy's device once, at start-up;
- validation accuracy over all pairs: TRL averages per-batch accuracies, so the validation pairs must fill
  whole evaluation batches (checked at start-up);
- defaults (AlpacaDPOConfig): the course's (section 5.4): RMSprop at a constant 1e-6, beta 0.1, 64 pairs per
  optimizer step over all processes (`total_batch`), one epoch over HH, no truncation (TRL: max_length
  1024), the loss logged every step, validation every eval_steps with a checkpoint at each, and the one with
  the best validation accuracy (the earliest among ties) loaded at the end, so that `save_model` writes it.
TRL options that would change the course's objective are rejected: TRL's own DPOTrainer has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import DPOConfig, DPOTrainer

from ..checkpoints import ResumableTrainerMixin
from ..model_card import AssignmentModelCardMixin
from ..model_saving import FullModelSaveMixin
from ..resume import RESUME_HELP
from ..run_log import MetricsLogCallback
from .alpaca import alpaca_prompt
from .total_batch import PER_DEVICE_HELP, TotalTrainBatch

# DPOConfig options that change the course's loss, with the only value accepted.
_COURSE_OBJECTIVE = {
    "loss_type": ["sigmoid"],
    "loss_weights": None,
    "ld_alpha": None,
    "f_divergence_type": "reverse_kl",
    "label_smoothing": 0.0,
    "use_weighting": False,
    "sync_ref_model": False,
}
PAIR_COLUMNS = ("instruction", "chosen", "rejected")


@dataclass
class AlpacaDPOConfig(TotalTrainBatch, DPOConfig):
    """DPOConfig with the course's DPO defaults (section 5.4) and `ref_model_device`; see the module doc."""

    ref_model_device: str | None = field(
        default=None,
        metadata={"help": "Device of the reference model, e.g. cuda:1 (the course's layout: the policy on cuda:0, the "
                  "reference on cuda:1, in one process). None: the policy's device, as in TRL."},
    )
    optim: str = field(default="rmsprop", metadata={"help": "Optimizer (the course: torch.optim.RMSprop)."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Learning rate (the course: 1e-6)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (the course gives none)."})
    beta: float = field(default=0.1, metadata={"help": "DPO's beta, the KL penalty's weight (the course: 0.1)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training pairs (the course: one "
                                                                   "epoch over HH)."})
    total_train_batch_size: int = field(
        default=64, metadata={"help": "Pairs per optimizer step, over all processes (the course: a batch size of 64)."}
    )
    gradient_accumulation_steps: int = field(
        default=32, metadata={"help": "Micro-batches per optimizer step on each process: 32 gives micro-batches of 2 "
                              "pairs in one process."}
    )
    per_device_train_batch_size: int | None = field(default=None, metadata={"help": PER_DEVICE_HELP})
    max_length: int | None = field(
        default=None, metadata={"help": "Truncate prompt + response to this many tokens. None: never (the course's)."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log the loss every this many steps (the course: each)."})
    eval_strategy: str = field(
        default="steps", metadata={"help": "Validate every eval_steps (accuracy of the implicit reward)."}
    )
    eval_steps: float | None = field(default=50, metadata={"help": "Optimizer steps between validations."})
    save_steps: float = field(
        default=50, metadata={"help": "Optimizer steps between checkpoints: keep it equal to eval_steps."}
    )
    load_best_model_at_end: bool = field(
        default=True,
        metadata={"help": "Load the checkpoint of best validation accuracy at the end (the one save_model writes)."},
    )
    metric_for_best_model: str | None = field(
        default="eval_rewards/accuracies", metadata={"help": "Validation metric that picks the best checkpoint."}
    )
    greater_is_better: bool | None = field(default=True, metadata={"help": "A higher metric_for_best_model is better."})
    resume: bool = field(default=True, metadata={"help": RESUME_HELP})

    def __post_init__(self):
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        for name, accepted in _COURSE_OBJECTIVE.items():
            if getattr(self, name) != accepted:
                raise ValueError(f"AlpacaDPOConfig: {name}: {getattr(self, name)!r} changes the course's DPO loss; leave it "
                                 f"at {accepted!r} (trl.DPOTrainer offers the other losses)")
        super().__post_init__()
        if isinstance(self.ref_model_device, str) and self.ref_model_device.lower() in ("", "none", "null"):
            self.ref_model_device = None  # the command line passes `--ref_model_device null` as a string
        if self.ref_model_device is not None and (self.world_size > 1 or self.deepspeed or self.fsdp):
            raise ValueError("ref_model_device: the two-device layout runs in one process, without DeepSpeed or FSDP; "
                             "launch with `python recipes/dpo.py` (or leave ref_model_device unset)")


class ReferenceOnDevice(torch.nn.Module):
    """Calls `model` on `device`: tensor arguments move there, and the tensors of its output come back to `home`."""

    def __init__(self, model, device: str | torch.device, home: torch.device):
        super().__init__()
        self.device, self.home = torch.device(device), home
        self.model = model.to(self.device)

    def forward(self, **kwargs):
        outputs = self.model(**{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in kwargs.items()})
        return type(outputs)(**{k: v.to(self.home) if torch.is_tensor(v) else v for k, v in outputs.items()})


def alpaca_pairs(dataset, name: str):
    """{prompt, chosen, rejected} for DPOTrainer from {instruction, chosen, rejected}: the prompt is the Alpaca template
    up to its response."""
    missing = set(PAIR_COLUMNS) - set(dataset.column_names)
    if missing:
        raise ValueError(f"{name}: columns {sorted(missing)} are missing (pairs are instruction, chosen, rejected, "
                         "as load_hh gives them)")
    return dataset.map(
        lambda row: {"prompt": alpaca_prompt(row["instruction"])},
        remove_columns=[column for column in dataset.column_names if column not in ("chosen", "rejected")],
    )


class AlpacaDPOTrainer(ResumableTrainerMixin, FullModelSaveMixin, AssignmentModelCardMixin, DPOTrainer):
    """DPO on Alpaca-formatted preference pairs with the course's loss (see the module doc).

    `train_dataset` / `eval_dataset`: Datasets of {instruction, chosen, rejected} (e.g. `HHDataArguments.load`).
    """

    _tag_names = ["trl", "dpo", "trl-math"]
    _name = "AlpacaDPO"
    assignment_problem = "dpo_training"

    def __init__(self, model, ref_model=None, args: AlpacaDPOConfig | None = None, train_dataset=None, eval_dataset=None,
                 **kwargs):
        if not isinstance(args, AlpacaDPOConfig):
            raise TypeError(f"AlpacaDPOTrainer needs an AlpacaDPOConfig, got {type(args).__name__}")
        if train_dataset is None:
            raise ValueError("train_dataset: required")
        if eval_dataset is not None:
            per_evaluation = args.per_device_eval_batch_size * args.world_size
            if len(eval_dataset) % per_evaluation:
                raise ValueError(
                    f"eval_dataset: {len(eval_dataset)} pairs do not fill evaluation batches of {per_evaluation} "
                    "(per_device_eval_batch_size x processes), and TRL's eval_rewards/accuracies averages per-batch "
                    "accuracies: choose a per_device_eval_batch_size that divides the validation size"
                )
            eval_dataset = alpaca_pairs(eval_dataset, "eval_dataset")
        if args.ref_model_device is not None:
            # The second GPU holds the reference, not a DataParallel replica (Trainer does the same for model parallelism).
            args._n_gpu = 1
        super().__init__(model, ref_model=ref_model, args=args, train_dataset=alpaca_pairs(train_dataset, "train_dataset"),
                         eval_dataset=eval_dataset, **kwargs)
        if args.ref_model_device is not None:
            if self.ref_model is None:
                raise ValueError("ref_model_device: no reference model is kept (PEFT adapters or precompute_ref_log_probs)")
            self.ref_model = ReferenceOnDevice(self.ref_model, args.ref_model_device, self.accelerator.device)
        self.add_callback(MetricsLogCallback())

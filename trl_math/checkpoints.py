"""Checkpoints that appear whole and carry the run's training time (MathGRPOTrainer, MathSFTTrainer).

Trainer writes `checkpoint-N/` file by file, from every process, so a run killed half-way through a save would
leave a folder that resuming (`get_last_checkpoint`) picks. Here every process writes into
`<output_dir>/_checkpoint-staging/checkpoint-N/`; once all are done, the main process flushes it to disk and
renames it to `<output_dir>/checkpoint-N`, and only then pushes it to the Hub (`push_to_hub`). A rename is atomic, so a `checkpoint-N` folder is always complete;
a staging folder left by a kill is discarded by the next save (and never matches `checkpoint-N`).

Each checkpoint also records the run's training time and its longest step so far (`training_time.json`), from
which the next segment's TrainingClock starts, so that `max_train_hours` spans a resumed run, with the count of
tokens trained on that TRL's SFT and DPO trainers keep in memory only (logged as `num_tokens`); and, when a SIGTERM
cut the validation of its step short (trl_math.preemption), `pending_validation.json`: the relaunch runs that
validation first (ours resume its records), then records it in the checkpoint and drops the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from .callbacks import TrainingClock
from .files import write_json_atomic

STAGING_DIR = "_checkpoint-staging"  # "_*": Trainer's pushes of output_dir to the Hub leave it out
TRAINING_TIME_FILE = "training_time.json"
PENDING_VALIDATION_FILE = "pending_validation.json"


def recorded_training_time(checkpoint: str | Path) -> dict:
    """What `checkpoint` records of its run (module doc): training_seconds, longest_step_seconds and num_tokens,
    0 where a checkpoint saved without trl-math's record lacks them."""
    path = Path(checkpoint) / TRAINING_TIME_FILE
    record = json.loads(path.read_text()) if path.exists() else {}
    return {key: record.get(key, 0) for key in ("training_seconds", "longest_step_seconds", "num_tokens")}


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk: the rename that publishes them must not outrun them."""
    for folder, _, files in os.walk(root):
        for name in [*files, "."]:
            _fsync(os.path.join(folder, name))


def publish(staged: Path, final: Path) -> None:
    """Rename the complete folder `staged` to `final` (replacing an older `final`), durably."""
    _fsync_tree(staged)
    if final.exists():  # the same step saved again (a run resumed from an earlier checkpoint): replace it
        replaced = staged.with_name(staged.name + ".replaced")
        os.replace(final, replaced)
        os.replace(staged, final)
        shutil.rmtree(replaced)
    else:
        os.replace(staged, final)
    _fsync(final.parent)  # the rename itself


class ResumableTrainerMixin:
    """Trainer mixin for runs that survive relaunches (trl_math.resume, trl_math.preemption): atomic checkpoints
    with the training time (module doc), `train()` that starts the run's TrainingClock from the checkpoint it
    resumes, and the pending validation of a preempted checkpoint run first. `eval_on_start` validates a run's
    start, not each resumed segment (whose step was validated before), so it is switched off when resuming; a run
    resumed from its last step (max_steps), or whose max_train_hours are spent, trains no further step."""

    _staging_checkpoint = False
    _push_pending = False
    _pending_validation: str | None = None  # the checkpoint whose validation this segment runs first
    validation_pending = False  # the next checkpoint records its step's validation as pending
    preemption = None  # the launch's trl_math.preemption.Preemption, set by its guard

    def __init__(self, *args, **kwargs):
        self.training_clock = TrainingClock()
        super().__init__(*args, **kwargs)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True  # Trainer raises on True
        resume_from_checkpoint = resume_from_checkpoint or None
        if isinstance(resume_from_checkpoint, str):
            pending = (Path(resume_from_checkpoint) / PENDING_VALIDATION_FILE).exists()
            self._pending_validation = resume_from_checkpoint if pending else None
            self.args.eval_on_start = pending  # Trainer's hook between loading the checkpoint and the first step
            record = recorded_training_time(resume_from_checkpoint)
            self.training_clock.begin(record["training_seconds"], record["longest_step_seconds"])
            if hasattr(self, "_total_train_tokens"):  # TRL's count, kept in memory only: continue the run's
                self._total_train_tokens = record["num_tokens"]
        else:
            self.training_clock.begin()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    @property
    def resuming_validation(self) -> bool:
        """Whether the validation running now is a preempted checkpoint's pending one (whose records it resumes)."""
        return self._pending_validation is not None

    def validation_safe_point(self, final: bool = False):
        """The safe point a validation of ours calls between chunks (trl_math.preemption); None when no SIGTERM is
        watched, or when the validation must finish (mid-rollout-batch)."""
        return None if self.preemption is None else self.preemption.validation_safe_point(self.state, final)

    def _evaluate(self, trial, ignore_keys_for_eval, skip_scheduler: bool = False):
        if self._pending_validation is None:
            return super()._evaluate(trial, ignore_keys_for_eval, skip_scheduler)
        checkpoint = Path(self._pending_validation)
        metrics = super()._evaluate(trial, ignore_keys_for_eval)  # as at its step, scheduler included
        self._pending_validation = None
        if self._determine_best_metric(metrics=metrics, trial=trial):
            self.state.best_model_checkpoint = str(checkpoint)
        if self.args.should_save:  # the checkpoint as an uninterrupted run saved it: validated, nothing pending
            state_file = checkpoint / TRAINER_STATE_NAME
            self.state.save_to_json(str(state_file.with_name(state_file.name + ".tmp")))
            os.replace(state_file.with_name(state_file.name + ".tmp"), state_file)
            (checkpoint / PENDING_VALIDATION_FILE).unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        return metrics

    def _run_epoch(self, *args, **kwargs):
        if self.state.global_step >= self.state.max_steps or self.control.should_training_stop:
            # resumed from the run's last step, which Trainer would follow with one more (it checks after a step),
            # or stopped before the first step (a spent max_train_hours)
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def policy_fingerprint(self) -> str:
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

    def save_preempted_checkpoint(self, validation_pending: bool) -> str | None:
        """The checkpoint of the run's last step, saved now unless it exists (a SIGTERM stopped the run at a safe
        point: trl_math.preemption); `validation_pending`: that step's validation was cut short. Every process
        calls it. None before the first step: nothing to save."""
        step = self.state.global_step
        if step == 0:
            return None
        checkpoint = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        if not checkpoint.is_dir():
            self.validation_pending = validation_pending
            self._save_checkpoint(self.model_wrapped, trial=None)
        return str(checkpoint)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._staging_checkpoint:  # an upload in the background would read files the rename moves
            self._push_pending = True
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging_checkpoint else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = run_dir / STAGING_DIR / name, run_dir / name
        if self.args.should_save:
            shutil.rmtree(run_dir / STAGING_DIR, ignore_errors=True)  # left by a save that was killed
        self.accelerator.wait_for_everyone()
        self._staging_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)  # every process writes its files into `staged`
        finally:
            self._staging_checkpoint = False
        best = self.state.best_model_checkpoint
        if best is not None and Path(best) == staged:  # Trainer recorded where it wrote, on every process (each
            self.state.best_model_checkpoint = str(final)  # loads its shard of the best model at the end under FSDP)
            if self.args.should_save:
                self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
        if self.args.should_save:
            write_json_atomic(staged / TRAINING_TIME_FILE, {
                "training_seconds": self.training_clock.elapsed(), "longest_step_seconds": self.training_clock.longest_step_s,
                "num_tokens": getattr(self, "_total_train_tokens", 0)})
            if self.validation_pending:
                write_json_atomic(staged / PENDING_VALIDATION_FILE, {"step": self.state.global_step})
        self.validation_pending = False
        self.accelerator.wait_for_everyone()  # every process's files (RNG states, shards) are complete
        if self.args.should_save:
            publish(staged, final)
            shutil.rmtree(run_dir / STAGING_DIR, ignore_errors=True)
            # Trainer rotated inside the staging folder: rotate the published checkpoints
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint,
                               use_mtime=True)
        self.accelerator.wait_for_everyone()
        if self._push_pending:
            self._push_pending = False
            self._push_from_checkpoint(str(final))

"""Checkpoints that appear whole and carry the run's training time (MathGRPOTrainer, MathSFTTrainer).

Trainer writes `checkpoint-N/` file by file, from every process, so a run killed half-way through a save would
leave a folder that resuming (`get_last_checkpoint`) picks. Here every process writes into
`<output_dir>/_checkpoint-staging/checkpoint-N/`; once all are done, the main process flushes it to disk and
renames it to `<output_dir>/checkpoint-N`, and only then pushes it to the Hub (`push_to_hub`). A rename is atomic, so a `checkpoint-N` folder is always complete;
a staging folder left by a kill is discarded by the next save (and never matches `checkpoint-N`).

Each checkpoint also records the run's training time (`training_time.json`), from which the next segment's
TrainingClock starts, so that `max_train_hours` spans a resumed run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from .callbacks import TrainingClock
from .files import write_json_atomic

STAGING_DIR = "_checkpoint-staging"  # "_*": Trainer's pushes of output_dir to the Hub leave it out
TRAINING_TIME_FILE = "training_time.json"


def recorded_training_seconds(checkpoint: str | Path) -> float:
    """Training time of the run when `checkpoint` was saved (0 for a checkpoint saved without trl-math's record)."""
    path = Path(checkpoint) / TRAINING_TIME_FILE
    return float(json.loads(path.read_text())["training_seconds"]) if path.exists() else 0.0


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
    """Trainer mixin: atomic checkpoints with the training time (module doc), and `train()` that starts the
    run's TrainingClock from the checkpoint it resumes. `eval_on_start` validates a run's start, not each resumed
    segment (whose step was validated before), so it is switched off when resuming; a run resumed from its last
    step (max_steps) trains no further step."""

    _staging_checkpoint = False
    _push_pending = False

    def __init__(self, *args, **kwargs):
        self.training_clock = TrainingClock()
        super().__init__(*args, **kwargs)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True  # Trainer raises on True
        resume_from_checkpoint = resume_from_checkpoint or None
        if isinstance(resume_from_checkpoint, str):
            self.args.eval_on_start = False
        self.training_clock.begin(recorded_training_seconds(resume_from_checkpoint)
                                  if isinstance(resume_from_checkpoint, str) else 0.0)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _run_epoch(self, *args, **kwargs):
        if self.state.global_step >= self.state.max_steps:  # resumed from the run's last step, which Trainer
            self.control.should_training_stop = True       # would follow with one more (it checks after a step)
            return None
        return super()._run_epoch(*args, **kwargs)

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
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            if best is not None and Path(best) == staged:  # Trainer recorded where it wrote
                self.state.best_model_checkpoint = str(final)
                self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
            write_json_atomic(staged / TRAINING_TIME_FILE, {"training_seconds": self.training_clock.elapsed()})
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

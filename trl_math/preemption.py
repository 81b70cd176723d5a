"""Preemption: a SIGTERM (SLURM's `--signal`, a spot instance's notice) ends training with a checkpoint that
resumes exactly, and the recipe exits with PREEMPTED_EXIT_CODE.

The signal handler only records the signal. Training stops at the next *resume boundary*: the end of an
optimizer step after which a resumed run reproduces the uninterrupted one. For SFT that is every step; for
GRPO it is the last step of a rollout batch (TRL does not save the buffered rollouts, so a run resumed
mid-batch would train the rest of that batch on fresh rollouts), and the run's last step. There the processes
decide together (any process that got the signal stops them all, so none waits for a step the others
skip), and the Trainer logs, validates if due, saves the checkpoint and returns.

Worst-case delay from the signal to the exit: the rest of the step in flight, the remaining steps of its
rollout batch (GRPO: at most `steps_per_rollout_batch - 1` more, none on-policy), the validation due at that
step, and writing the checkpoint. Outside `train()` (loading, the final save and validation) SIGTERM keeps its
default action: the process ends at once, and the relaunch resumes from the last checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from transformers import TrainerCallback

# EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry"): preempted, relaunch to continue.
PREEMPTED_EXIT_CODE = 75


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on at least one (a collective: every process must call it)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    if not PartialState().use_distributed:
        return flag
    return any(gather_object([flag]))


class PreemptionCallback(TrainerCallback):
    """Stops training with a checkpoint at the first resume boundary after `signum` arrived (module doc).

    `boundary_steps`: optimizer steps between resume boundaries (GRPO: `steps_per_rollout_batch`). Install the
    handler with `armed()` around `train()`; `preempted` tells afterwards whether training stopped for the signal.
    """

    def __init__(self, boundary_steps: int = 1, signum: int = signal.SIGTERM):
        if boundary_steps < 1:
            raise ValueError(f"boundary_steps must be >= 1, got {boundary_steps}")
        self.boundary_steps = boundary_steps
        self.signum = signum
        self.requested = False
        self.preempted = False

    @contextmanager
    def armed(self):
        """Record `signum` instead of dying while the block runs (only the main thread can install handlers;
        elsewhere the signal keeps its action)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(self.signum, self._record)
        try:
            yield self
        finally:
            signal.signal(self.signum, previous)

    def _record(self, signum, frame) -> None:
        if not self.requested:  # os.write: print() may be in the middle of writing to the same stream
            os.write(2, f"\n{signal.Signals(signum).name} received: training stops with a checkpoint at the next resume "
                        f"boundary (every {self.boundary_steps} optimizer step(s))\n".encode())
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        at_boundary = state.global_step % self.boundary_steps == 0 or state.global_step >= state.max_steps
        if at_boundary and any_process(self.requested):  # every process reaches the same steps: all call it
            self.preempted = True
            control.should_training_stop = True
            control.should_save = True
        return control


def train_preemptible(trainer, resume_from_checkpoint: str | None = None) -> bool:
    """`trainer.train(resume_from_checkpoint)`, which a SIGTERM ends with a checkpoint at the next resume
    boundary; returns whether it did (the caller then skips the final steps and exits with PREEMPTED_EXIT_CODE)."""
    # GRPO: only a rollout batch's last step resumes exactly (module doc); SFT: every step.
    callback = PreemptionCallback(getattr(trainer.args, "steps_per_rollout_batch", 1))
    trainer.add_callback(callback)
    with callback.armed():
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if callback.preempted and trainer.is_world_process_zero():
        print(f"preempted: saved checkpoint-{trainer.state.global_step} in {trainer.args.output_dir}; exiting with "
              f"{PREEMPTED_EXIT_CODE} (relaunch the same command to continue)", flush=True)
    return callback.preempted

"""Preemption: a SIGTERM (SLURM's `--signal`, a spot instance's notice, torchrun passing a signal on to its
workers) ends a run at the first safe point after it arrives, with a checkpoint that resumes exactly, and the
recipe exits with PREEMPTED_EXIT_CODE (75) whenever the run stopped early. One mechanism for every recipe
(GRPO, SFT, expert iteration, instruction tuning, DPO): `Preemption`.

The signal handler only records the signal; at each safe point the processes decide together (any process
that got the signal stops them all, so none waits for work the others skip). The safe points:

- the start of training (a signal while the model or a checkpoint loaded): the run stops there, with nothing new
  to save;
- the end of an optimizer step at a *resume boundary*, after which a resumed run reproduces the uninterrupted
  one: every step for SFT, instruction tuning and DPO; for GRPO the last step of a rollout batch (TRL does not
  save the buffered rollouts) and the run's last step. The Trainer logs the step and saves a checkpoint; a
  validation due at that step is not started: the checkpoint records it as pending;
- between two chunks of a validation of ours (GRPO, SFT, expert iteration) at a resume boundary: the
  validation stops there, its records so far stay on disk, and the checkpoint records it as pending (a
  validation due mid-rollout-batch is finished, and the run stops at the end of the rollout batch);
- after a validation (the Trainer's own evaluation loop included) and after a checkpoint, at a resume boundary;
- after training: after saving the final model, between two chunks of the final validation, before pushing to
  the Hub. The run saves a checkpoint of its last step if it has none;
- expert iteration: before and after sampling an EI step's rollouts, after each optimizer step of its SFT phase,
  between two chunks of validation problems, after each EI step. An EI step not yet saved is abandoned (the
  relaunch redoes it from the last saved one, identically); a saved one whose validation was cut short has it
  pending.

A relaunch (trl_math.resume) continues from that checkpoint and first runs the pending validation (ours resume
their records); after training it redoes the final steps, resuming the final validation. Before a trainer exists
(loading data and the model) there is nothing to save: a SIGTERM ends the launch at once, with exit code 75.

Worst-case delay from the signal to the exit: the step in flight, the rest of its rollout batch (GRPO: at most
`steps_per_rollout_batch - 1` more steps, none on-policy), one chunk of validation (or a whole evaluation loop
of instruction tuning or DPO), and writing the checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

from transformers import TrainerCallback

# EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry"): preempted, relaunch to continue.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """The run stops at a safe point for a SIGTERM. `validation_pending`: a periodic validation was cut short, and
    the relaunch runs it first."""

    def __init__(self, validation_pending: bool = False):
        super().__init__("preempted by a signal")
        self.validation_pending = validation_pending


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on at least one (a collective: every process must call it)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    if not PartialState().use_distributed:
        return flag
    return any(gather_object([flag]))


class Preemption:
    """SIGTERM handling of one launch (module doc): a context manager around a recipe's work.

    Until `guard(trainer)` the signal ends the launch at once (exit code 75); inside `guard` it is recorded, and
    the run stops at the next safe point (`safe_point()`, the trainer's callbacks and validations), where the
    guard makes sure a checkpoint exists (`trainer.save_preempted_checkpoint`). Leaving the context of a preempted
    run exits with PREEMPTED_EXIT_CODE, so recipes tear down (trackers, process group) inside it.

    `boundary_steps`: optimizer steps between resume boundaries (GRPO: `steps_per_rollout_batch`; default: the
    trainer's args say so, else every step).
    """

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        self.requested = False
        self.preempted = False
        self.guarding = False  # a trainer exists: record the signal (until then, exit at once)
        self.trainer = None
        self.boundary_steps = 1
        self._previous = None

    # ----- the handler ----------------------------------------------------------------------------------------
    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # elsewhere the signal keeps its action
            self._previous = signal.signal(self.signum, self._record)
        return self

    def __exit__(self, exc_type, exc, traceback):
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
        if exc_type is None and self.preempted:
            sys.exit(PREEMPTED_EXIT_CODE)
        return False

    def _record(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if not self.guarding:  # nothing trained, nothing to save: end the launch now
            os.write(2, f"\n{name} received before training: exiting with {PREEMPTED_EXIT_CODE}\n".encode())
            raise SystemExit(PREEMPTED_EXIT_CODE)
        if not self.requested:  # os.write: print() may be in the middle of writing to the same stream
            os.write(2, f"\n{name} received: the run stops with a checkpoint at the next safe point\n".encode())
        self.requested = True

    # ----- safe points ----------------------------------------------------------------------------------------
    def stop_requested(self) -> bool:
        """Whether any process got the signal (a collective: every process calls it at the same safe point)."""
        return any_process(self.requested)

    def safe_point(self, validation_pending: bool = False) -> None:
        """Raise Preempted if any process got the signal (every process calls it at the same point)."""
        if self.stop_requested():
            raise Preempted(validation_pending)

    def at_boundary(self, state) -> bool:
        """Whether the Trainer's last step is a resume boundary (module doc)."""
        return state.global_step % self.boundary_steps == 0 or state.global_step >= state.max_steps

    def validation_safe_point(self, state, final: bool = False):
        """What a validation of ours calls between chunks of problems (evaluation's `safe_point`): at a resume
        boundary (or in the final validation), stop there; elsewhere None (it finishes, the run stops later)."""
        if final:
            return self.safe_point
        if not self.at_boundary(state):
            return None
        return lambda: self.safe_point(validation_pending=True)

    # ----- the trainer ----------------------------------------------------------------------------------------
    @contextmanager
    def guard(self, trainer, boundary_steps: int | None = None):
        """From here on a SIGTERM stops `trainer`'s run at the next safe point; a Preempted raised in the block
        ends the block after `trainer.save_preempted_checkpoint` (every process), and marks the launch preempted.

        `trainer`: a transformers Trainer with trl_math.checkpoints.ResumableTrainerMixin (the callback is added to
        it), or any object with `save_preempted_checkpoint(validation_pending) -> str | None` (expert iteration)."""
        self.boundary_steps = boundary_steps or getattr(getattr(trainer, "args", None), "steps_per_rollout_batch", 1)
        self.trainer, self.guarding = trainer, True
        trainer.preemption = self
        if hasattr(trainer, "add_callback"):
            trainer.add_callback(PreemptionCallback(self, trainer))
        try:
            yield self
        except Preempted as preempted:
            self.preempted = True
            resumes_from = trainer.save_preempted_checkpoint(preempted.validation_pending)
            if _is_main_process():
                where = f"the relaunch continues from {resumes_from}" if resumes_from else \
                    "nothing was trained yet: the relaunch starts over"
                print(f"preempted: {where}; exiting with {PREEMPTED_EXIT_CODE} (relaunch the same command to "
                      "continue)", flush=True)
        finally:
            self.trainer = None  # the recipe may release the trainer (teardown); the signal is still recorded


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


class PreemptionCallback(TrainerCallback):
    """A Trainer's safe points (trl_math.preemption): at a resume boundary after a SIGTERM, the end of a step
    logs and saves instead of validating (the validation is left pending), and the end of a validation or of a
    checkpoint stops the run there (saving first if need be). Before the first step of a run, or before the first
    step of a resumed segment (a signal while it loaded its checkpoint), there is nothing new to save: Preempted is
    raised."""

    def __init__(self, preemption: Preemption, trainer):
        self.preemption, self.trainer = preemption, trainer

    def _stopping(self, state) -> bool:
        # Every process reaches the same steps, validations and saves: all of them call the collective.
        if not (self.preemption.at_boundary(state) and self.preemption.stop_requested()):
            return False
        if state.global_step == 0:
            raise Preempted()
        return True

    def on_train_begin(self, args, state, control, **kwargs):
        self.preemption.safe_point()  # a resumed segment starts at its checkpoint: nothing to train before stopping

    def on_step_end(self, args, state, control, **kwargs):
        if self._stopping(state):
            if control.should_evaluate:  # the relaunch runs it first (ResumableTrainerMixin)
                control.should_evaluate = False
                self.trainer.validation_pending = True
            control.should_save = control.should_training_stop = True
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        if self._stopping(state):
            control.should_save = control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self._stopping(state):
            control.should_training_stop = True
        return control

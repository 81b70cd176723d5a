"""Trainer callbacks of trl-math: a wall-clock budget for training (the leaderboard's 4 hours), counted over every
segment of a resumed run."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class TrainingClock:
    """Seconds spent in `train()` by a run, over all its segments: the time recorded with the checkpoint this
    segment resumed from (`begin(offset_s)`), plus the time since this segment's `train()` began; and the run's
    longest step so far (recorded with the checkpoints too; WallClockBudgetCallback measures it).

    Work lost to a crash (steps after the last checkpoint) does not count: the run redoes it.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.offset_s = 0.0
        self.longest_step_s = 0.0
        self.start = None

    def begin(self, offset_s: float = 0.0, longest_step_s: float = 0.0) -> None:
        self.offset_s = float(offset_s)
        self.longest_step_s = float(longest_step_s)
        self.start = self.clock()

    def elapsed(self) -> float:
        return self.offset_s + (0.0 if self.start is None else self.clock() - self.start)


class WallClockBudgetCallback(TrainerCallback):
    """Stops training when the next optimizer step could end past `max_hours` of training time.

    Training time is `clock.elapsed()` (a TrainingClock the trainer begins in `train()`): a resumed run counts
    the segments before its checkpoint, so relaunching with the same `max_train_hours` keeps the total within it.
    The next step is assumed to last as long as the longest interval between two step ends so far in the run
    (which includes any validation or checkpoint in between; recorded with the checkpoints), so training ends in
    time and the caller can run its final validation. A segment that starts with the budget spent trains no step
    and says why. All processes follow the main process's decision, so none waits for a step that others skip.
    """

    def __init__(self, max_hours: float, clock: TrainingClock):
        if not max_hours > 0:
            raise ValueError(f"max_hours must be > 0, got {max_hours}")
        self.budget_s = max_hours * 3600.0
        self.clock = clock
        self.last = None

    @property
    def longest_step_s(self) -> float:
        return self.clock.longest_step_s

    def _over_budget(self, now: float) -> bool:
        """Whether the next step could end past the budget: the main process decides for all."""
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        stop = [now >= self.budget_s or now + self.clock.longest_step_s > self.budget_s]
        if PartialState().use_distributed:
            broadcast_object_list(stop, from_process=0)
        return stop[0]

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = self.clock.elapsed()
        if self._over_budget(self.last):  # ResumableTrainerMixin then trains no step
            control.should_training_stop = True
            if state.is_world_process_zero:
                print(f"max_train_hours: the budget of {self.budget_s / 3600:g} h is spent ({self.clock.offset_s:.0f} s "
                      f"trained before this segment, the longest step took {self.clock.longest_step_s:.0f} s): no "
                      "further step is trained", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock.elapsed()
        self.clock.longest_step_s = max(self.clock.longest_step_s, now - self.last)
        self.last = now
        if self._over_budget(now):
            control.should_training_stop = True
            control.should_save = True
        return control

"""Trainer callbacks of trl-math: a wall-clock budget for training (the leaderboard's 4 hours)."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class WallClockBudgetCallback(TrainerCallback):
    """Stops training when the next optimizer step could end past `max_hours` since `train()` began.

    The next step is assumed to last as long as the longest interval between two step ends so far
    (which includes any validation or checkpoint in between), so training ends in time and the caller
    can run its final validation. All processes follow the main process's decision, so none waits for a step that others skip.
    The budget counts from this process's `train()` call: when resuming, pass the budget that remains.
    """

    def __init__(self, max_hours: float, clock=time.monotonic):
        if not max_hours > 0:
            raise ValueError(f"max_hours must be > 0, got {max_hours}")
        self.budget_s = max_hours * 3600.0
        self.clock = clock
        self.start = self.last = None
        self.longest_step_s = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last = self.clock()
        self.longest_step_s = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        self.longest_step_s = max(self.longest_step_s, now - self.last)
        self.last = now
        stop = [now - self.start + self.longest_step_s > self.budget_s]
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        if PartialState().use_distributed:
            broadcast_object_list(stop, from_process=0)
        if stop[0]:
            control.should_training_stop = True
            control.should_save = True
        return control

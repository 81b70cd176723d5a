"""WallClockBudgetCallback: training stops before the next step could overrun the budget."""

from __future__ import annotations

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from trl_math.callbacks import WallClockBudgetCallback


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_stops_when_the_longest_step_would_overrun(tmp_path):
    clock = FakeClock()
    budget = WallClockBudgetCallback(max_hours=1.0, clock=clock)  # 3600 s
    args, state = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"), TrainerState()
    control = TrainerControl()
    budget.on_train_begin(args, state, control)
    stopped_at = None
    for step, duration in enumerate([1000, 1000, 500, 600], start=1):  # ends at 1000, 2000, 2500, 3100 s
        clock.now += duration
        budget.on_step_end(args, state, control)
        if control.should_training_stop:
            stopped_at = step
            break
    # After step 2 (2000 s), a 1000 s step ends at 3000 s: go on. After step 3 (2500 s) it would end at 3500 s:
    # still inside. After step 4 (3100 s) the next could end at 4100 s: stop, and save.
    assert stopped_at == 4 and control.should_save
    assert budget.longest_step_s == 1000


def test_rejects_a_non_positive_budget():
    with pytest.raises(ValueError, match="max_hours"):
        WallClockBudgetCallback(max_hours=0)

"""WallClockBudgetCallback: training stops before the next step could overrun the budget, counting the training
time of a resumed run's earlier segments."""

from __future__ import annotations

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from trl_math.callbacks import TrainingClock, WallClockBudgetCallback


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def step_until_stopped(tmp_path, offset_s: float, durations: list[float],
                       longest_s: float = 0.0) -> tuple[int | None, WallClockBudgetCallback]:
    """Run a 1-hour budget over steps of `durations` seconds, in a segment resumed after `offset_s` seconds of
    training whose longest step took `longest_s`; returns the step after which it stopped (None: never; 0: before
    the first)."""
    clock = FakeClock()
    training = TrainingClock(clock)
    training.begin(offset_s, longest_s)
    budget = WallClockBudgetCallback(max_hours=1.0, clock=training)  # 3600 s
    args, state = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"), TrainerState()
    control = TrainerControl()
    budget.on_train_begin(args, state, control)
    if control.should_training_stop:
        return 0, budget
    for step, duration in enumerate(durations, start=1):
        clock.now += duration
        budget.on_step_end(args, state, control)
        if control.should_training_stop:
            assert control.should_save
            return step, budget
    return None, budget


def test_stops_when_the_longest_step_would_overrun(tmp_path):
    stopped_at, budget = step_until_stopped(tmp_path, 0.0, [1000, 1000, 500, 600])  # ends at 1000, 2000, 2500, 3100 s
    # After step 2 (2000 s), a 1000 s step ends at 3000 s: go on. After step 3 (2500 s) it would end at 3500 s:
    # still inside. After step 4 (3100 s) the next could end at 4100 s: stop, and save.
    assert stopped_at == 4
    assert budget.longest_step_s == 1000


def test_a_resumed_segment_counts_the_training_time_before_its_checkpoint(tmp_path):
    # 2000 s were spent before the checkpoint: after 1000 s more, a 1000 s step could end at 4000 s.
    assert step_until_stopped(tmp_path, 2000.0, [1000, 1000])[0] == 1
    # Counted from this segment alone, it would have gone on.
    assert step_until_stopped(tmp_path, 0.0, [1000, 1000])[0] is None


def test_a_segment_that_starts_with_the_budget_spent_trains_no_step(tmp_path, capsys):
    assert step_until_stopped(tmp_path, 3600.0, [10])[0] == 0
    assert "the budget of 1 h is spent (3600 s trained before this segment" in capsys.readouterr().out
    # The longest step of the earlier segments counts too: 3550 s + a 100 s step would overrun.
    assert step_until_stopped(tmp_path, 3550.0, [100], longest_s=100.0)[0] == 0
    assert step_until_stopped(tmp_path, 3450.0, [100, 100], longest_s=100.0)[0] == 1


def test_rejects_a_non_positive_budget():
    with pytest.raises(ValueError, match="max_hours"):
        WallClockBudgetCallback(max_hours=0, clock=TrainingClock())

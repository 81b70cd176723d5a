"""A plot-ready metrics log: every logged dict, with step and wall-clock time, one JSON line each.

TRL's trainer_state.json keeps `log_history` without time stamps and is written only at checkpoints;
this file is appended and flushed at every log, so a run that dies keeps its curve, and the plot CLI
can draw validation reward against wall-clock time as well as against step.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from transformers import TrainerCallback

from .files import JsonlWriter, filter_jsonl

METRICS_FILE = "metrics.jsonl"


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogCallback(TrainerCallback):
    """Appends `{"step", "wall_time_s", **logs}` to `<output_dir>/metrics.jsonl` on the main process.

    `wall_time_s` counts from the first `train()` of this output directory. A run resumed from a
    checkpoint first drops the records past the checkpoint's step (those steps are trained again), then
    continues the clock from the last record it keeps, so curves of interrupted runs stay continuous.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.path: Path | None = None
        self.offset_s = 0.0
        self.start = None
        self._trimmed = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.path = Path(args.output_dir) / METRICS_FILE
        self.start = self.clock()
        self.offset_s = 0.0
        self._trimmed = False  # global_step is restored from a checkpoint only after this event

    def _trim_to(self, step: int) -> None:
        """Keep the records up to `step`; resume the clock from the last one kept."""
        self._trimmed = True
        kept = filter_jsonl(self.path, lambda record: record.get("step", 0) <= step)
        if kept:
            self.offset_s = float(kept[-1].get("wall_time_s", 0.0))

    def on_step_begin(self, args, state, control, **kwargs):
        if not self._trimmed and state.is_world_process_zero and self.path is not None:
            self._trim_to(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.start is None:  # logging outside train() (e.g. a standalone evaluate())
            self.on_train_begin(args, state, control)
        if not self._trimmed:
            self._trim_to(state.global_step)
        record = {"step": state.global_step, "wall_time_s": round(self.offset_s + self.clock() - self.start, 3)}
        record.update({k: _jsonable(v) for k, v in logs.items() if isinstance(v, (int, float, str, bool))})
        with JsonlWriter(self.path, append=True) as writer:
            writer.write(record)

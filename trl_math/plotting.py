"""Validation curves of one or several runs, against optimizer step (or rollout batch) and wall-clock time.

The assignment's deliverables are such curves (learning-rate sweep, baselines, off-policy sweep...). GRPO,
SFT and expert iteration all log validation accuracy as `eval_answer_accuracy`, so their runs share a
figure, and each panel's axis means the same for all three: wall-clock minutes, and optimizer steps (an
expert-iteration run is drawn at the optimizer steps of its SFT phases so far, its `optimizer_step`, not at
its EI step, which holds any number of them). A GRPO run's final full validation (`final_eval_answer_accuracy`,
every validation problem) is drawn apart, as a star, not as a point of the periodic curve. `x="rollout_batch"`
puts on- and off-policy GRPO runs on one axis (GRPO logs `rollout_batch`).
Runs are output directories: `metrics.jsonl` (written by MetricsLogCallback, with wall-clock time)
is preferred; TRL's `trainer_state.json` is the fallback and gives the step axis only.
"""

from __future__ import annotations

import json
from pathlib import Path

from .files import read_jsonl
from .run_log import METRICS_FILE

# Validation metrics in order of preference when none is named.
DEFAULT_METRICS = ("eval_answer_accuracy", "eval_answer_reward", "eval_reward", "eval_accuracy")
X_AXES = {"step": "optimizer step (EI: of its SFT phases)", "rollout_batch": "rollout batch (GRPO)"}
# The record key of each x axis; an expert-iteration run's `step` is its EI step, its `optimizer_step` the axis's.
_X_KEYS = {"step": ("optimizer_step", "step"), "rollout_batch": ("rollout_batch",)}


def load_run(run_dir: str | Path) -> list[dict]:
    """All logged records of a run directory (see module docstring)."""
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).exists():
        return read_jsonl(run_dir / METRICS_FILE)
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]))
    state_file = run_dir / "trainer_state.json"
    if not state_file.exists() and states:
        state_file = states[-1]
    if not state_file.exists():
        raise FileNotFoundError(f"{run_dir}: no {METRICS_FILE} and no trainer_state.json")
    return json.loads(state_file.read_text())["log_history"]


def pick_metric(runs: dict[str, list[dict]], metric: str | None) -> str:
    present = {key for records in runs.values() for record in records for key in record}
    if metric is not None:
        if metric not in present:
            raise ValueError(f"metric {metric!r} is in none of the runs; logged keys: {sorted(present)}")
        return metric
    for candidate in DEFAULT_METRICS:
        if candidate in present:
            return candidate
    eval_keys = sorted(k for k in present if k.startswith("eval_"))
    raise ValueError(f"no validation metric found (tried {DEFAULT_METRICS}); name one with --metric: {eval_keys}")


def plot_runs(run_dirs: list[str | Path], output: str | Path, metric: str | None = None, labels: list[str] | None = None,
              x: str = "step") -> Path:
    """Draw `metric` of each run (see `draw_runs`) into a PNG at `output`."""
    import matplotlib.pyplot as plt

    fig = draw_runs(run_dirs, metric, labels, x)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def draw_runs(run_dirs: list[str | Path], metric: str | None = None, labels: list[str] | None = None, x: str = "step"):
    """A figure of `metric` of each run against `x` ("step": optimizer steps, EI runs' `optimizer_step`; or
    "rollout_batch") and, where known, wall-clock minutes: one line per run; the final full validation
    (`final_<metric>`) a star of the run's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in X_AXES:
        raise ValueError(f"x axis {x!r} is not one of {sorted(X_AXES)}")
    labels = labels or [Path(d).name for d in run_dirs]
    runs = {label: load_run(d) for label, d in zip(labels, run_dirs)}
    metric = pick_metric(runs, metric)
    final_metric = f"final_{metric}"
    fig, (by_x, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, records in runs.items():
        key = next((k for k in _X_KEYS[x] if any(k in r for r in records)), x)
        points = [r for r in records if metric in r and r.get(key) is not None]
        finals = [r for r in records if final_metric in r and r.get(key) is not None]
        if key != "rollout_batch" and any("ei/rollouts" in r for r in records) and \
                any(r.get("optimizer_step") is None for r in records if metric in r):
            raise ValueError(f"run {label!r} is an expert-iteration log without optimizer_step (written before "
                             "trl-math logged it): its steps are EI steps, not optimizer steps")
        if x == "rollout_batch" and any(metric in r for r in records) and not points:
            raise ValueError(f"run {label!r} logged no rollout_batch (only GRPO runs do): plot it with x='step'")
        if not points and not finals:
            continue
        line, = by_x.plot([r[key] for r in points], [r[metric] for r in points], marker="o", ms=3, label=label)
        timed = [r for r in points if "wall_time_s" in r]
        if timed:
            by_time.plot([r["wall_time_s"] / 60 for r in timed], [r[metric] for r in timed], marker="o", ms=3,
                         label=label, color=line.get_color())
        for r in finals:
            n = r.get("final_eval_n")
            star = {"marker": "*", "s": 160, "color": line.get_color(), "edgecolors": "black", "zorder": 3,
                    "label": f"{label}: final validation" + (f" ({n} problems)" if n else "")}
            by_x.scatter([r[key]], [r[final_metric]], **star)
            if "wall_time_s" in r:
                by_time.scatter([r["wall_time_s"] / 60], [r[final_metric]], **star)
    by_x.set_xlabel(X_AXES[x])
    by_time.set_xlabel("wall-clock minutes")
    for ax in (by_x, by_time):
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{metric} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
    fig.tight_layout()
    return fig

"""metrics.jsonl logging, the plot CLI and the synthetic task."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from trl_math.cli import main as cli_main
from trl_math.files import read_jsonl as read_metrics
from trl_math.run_log import MetricsLogCallback
from trl_math.synthetic import arithmetic_trace, make_arithmetic_splits


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _log_run(output_dir, rewards, clock, start_step=0):
    """Drive the callback as Trainer does: train begins, then (on resume) the checkpoint's step is restored."""
    args = TrainingArguments(output_dir=str(output_dir), use_cpu=True, report_to="none")
    state = TrainerState()
    callback = MetricsLogCallback(clock=clock)
    callback.on_train_begin(args, state, TrainerControl())
    state.global_step = start_step
    for i, reward in enumerate(rewards, start=start_step + 1):
        callback.on_step_begin(args, state, TrainerControl())
        clock.now += 30.0
        state.global_step = i
        callback.on_log(args, state, TrainerControl(), logs={"loss": 0.5, "eval_answer_reward": reward, "note": None})
    return output_dir


def test_metrics_log_records_step_and_wall_time_and_resumes_the_clock(tmp_path):
    clock = FakeClock()
    _log_run(tmp_path, [0.1, 0.2], clock)
    _log_run(tmp_path, [0.3], clock, start_step=2)  # a resumed run appends and continues the clock
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["wall_time_s"], r["eval_answer_reward"]) for r in records] == [
        (1, 30.0, 0.1), (2, 60.0, 0.2), (3, 90.0, 0.3)
    ]
    assert "note" not in records[0]


def test_resume_from_an_earlier_checkpoint_drops_the_steps_trained_again(tmp_path):
    clock = FakeClock()
    _log_run(tmp_path, [0.1, 0.2, 0.3, 0.4], clock)  # died after step 4; the last checkpoint is step 2
    _log_run(tmp_path, [0.5, 0.6], clock, start_step=2)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["wall_time_s"], r["eval_answer_reward"]) for r in records] == [
        (1, 30.0, 0.1), (2, 60.0, 0.2), (3, 90.0, 0.5), (4, 120.0, 0.6)
    ]


def test_read_metrics_tolerates_only_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "eval_')
    assert read_metrics(path) == [{"step": 1}]
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics(path)


def test_plot_cli_renders_two_runs(tmp_path, capsys):
    from matplotlib.image import imread

    clock = FakeClock()
    run_a = _log_run(tmp_path / "lr_1e-5", [0.1, 0.2, 0.35], clock)
    run_b = tmp_path / "lr_3e-5"
    run_b.mkdir()
    # a run without metrics.jsonl: TRL's trainer_state.json gives the step axis
    (run_b / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"step": 1, "eval_answer_reward": 0.15}, {"step": 2, "loss": 0.3}, {"step": 3, "eval_answer_reward": 0.5}]}))
    out = tmp_path / "curves.png"
    assert cli_main(["plot", str(run_a), str(run_b), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    image = imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 800


def _write_metrics(run_dir, records):
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def test_grpo_sft_and_ei_runs_share_a_figure_and_the_final_validation_stands_apart(tmp_path, capsys):
    from trl_math.plotting import draw_runs

    grpo = _write_metrics(tmp_path / "grpo", [
        {"step": 0, "wall_time_s": 0, "rollout_batch": 0.0, "eval_answer_accuracy": 0.1},
        {"step": 4, "wall_time_s": 60, "rollout_batch": 1.0, "loss": 0.2},
        {"step": 40, "wall_time_s": 600, "rollout_batch": 10.0, "eval_answer_accuracy": 0.3},
        {"step": 40, "wall_time_s": 900, "rollout_batch": 10.0, "final_eval_answer_accuracy": 0.28, "final_eval_n": 5000},
    ])
    sft = _write_metrics(tmp_path / "sft", [{"step": 0, "wall_time_s": 0, "eval_answer_accuracy": 0.05},
                                            {"step": 50, "wall_time_s": 300, "eval_answer_accuracy": 0.2}])
    # an EI run logs its EI step as `step`, the optimizer steps of its SFT phases so far as `optimizer_step`
    ei = _write_metrics(tmp_path / "ei", [
        {"step": 0, "optimizer_step": 0, "wall_time_s": 0, "eval_answer_accuracy": 0.05},
        {"step": 1, "optimizer_step": 12, "wall_time_s": 120, "ei/rollouts": 2048, "eval_answer_accuracy": 0.15},
        {"step": 2, "optimizer_step": 30, "wall_time_s": 250, "ei/rollouts": 2048, "eval_answer_accuracy": 0.2}])
    fig = draw_runs([grpo, sft, ei])  # the default metric: every trainer's validation accuracy
    by_step, by_time = fig.axes
    assert by_step.get_ylabel() == "eval_answer_accuracy"
    assert by_step.get_xlabel() == "optimizer step (EI: of its SFT phases)"
    curves = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in by_step.get_lines()}
    assert curves == {"grpo": [(0, 0.1), (40, 0.3)], "sft": [(0, 0.05), (50, 0.2)],
                      "ei": [(0, 0.05), (12, 0.15), (30, 0.2)]}  # optimizer steps, not EI steps
    minutes = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in by_time.get_lines()}
    assert minutes["ei"] == [(0, 0.05), (2, 0.15), (250 / 60, 0.2)] and by_time.get_xlabel() == "wall-clock minutes"
    (star,) = by_step.collections  # the final validation: a point apart from the periodic curve
    assert star.get_offsets().tolist() == [[40.0, 0.28]] and star.get_label() == "grpo: final validation (5000 problems)"
    assert by_time.collections[0].get_offsets().tolist() == [[15.0, 0.28]]

    by_batch = draw_runs([grpo], x="rollout_batch").axes[0]
    assert [tuple(p) for p in by_batch.get_lines()[0].get_xydata()] == [(0.0, 0.1), (10.0, 0.3)]
    assert by_batch.get_xlabel() == "rollout batch (GRPO)"
    with pytest.raises(ValueError, match="only GRPO runs"):
        draw_runs([grpo, sft], x="rollout_batch")
    assert cli_main(["plot", str(grpo), str(sft), str(ei), "-o", str(tmp_path / "all.png")]) == 0
    # an EI log without optimizer_step has only EI steps: it is not drawn on the optimizer-step axis
    old_ei = _write_metrics(tmp_path / "old_ei", [{k: v for k, v in r.items() if k != "optimizer_step"}
                                                  for r in read_metrics(ei / "metrics.jsonl")])
    with pytest.raises(ValueError, match="'old_ei' is an expert-iteration log without optimizer_step"):
        draw_runs([old_ei])
    # nor is such a run resumed by this version, whose new records carry optimizer_step None (unknown)
    resumed = _write_metrics(tmp_path / "resumed_ei", [*read_metrics(old_ei / "metrics.jsonl"), {
        "step": 3, "optimizer_step": None, "wall_time_s": 400, "ei/rollouts": 2048, "eval_answer_accuracy": 0.25}])
    with pytest.raises(ValueError, match="'resumed_ei' is an expert-iteration log without optimizer_step"):
        draw_runs([resumed])


def test_plot_cli_names_a_missing_metric(tmp_path, capsys):
    run = _log_run(tmp_path / "run", [0.1], FakeClock())
    assert cli_main(["plot", str(run), "--metric", "eval_nope", "-o", str(tmp_path / "x.png")]) == 2
    assert "eval_nope" in capsys.readouterr().err
    assert cli_main(["plot", str(tmp_path / "missing"), "-o", str(tmp_path / "x.png")]) == 2


def test_arithmetic_splits_are_seeded_disjoint_and_exact():
    a = make_arithmetic_splits(3, {"train": 500, "validation": 50, "test": 100})
    b = make_arithmetic_splits(3, {"train": 500, "validation": 50, "test": 100})
    assert a == b
    problems = [row["problem"] for rows in a.values() for row in rows]
    assert len(set(problems)) == len(problems) == 650
    for row in a["test"]:
        x, y = map(int, row["problem"].removeprefix("What is ").removesuffix("?").split("+"))
        assert int(row["answer"]) == x + y
        assert row["trace"] == f" {x}+{y}={x + y} </think> <answer> {x + y} </answer>"
    assert make_arithmetic_splits(4, {"train": 10}) != make_arithmetic_splits(3, {"train": 10})


def test_multi_step_trace_and_bad_sizes():
    assert arithmetic_trace([10, 20, 5]) == " 10+20=30, 30+5=35 </think> <answer> 35 </answer>"
    with pytest.raises(ValueError, match="distinct problems"):
        make_arithmetic_splits(0, {"train": 5000}, low=10, high=99)

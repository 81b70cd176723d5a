"""Fault tolerance: resume by default, start over, run-config checks, atomic checkpoints, SIGTERM preemption and
the wall-clock budget across segments, down to real GRPO and SFT launches killed with SIGTERM and SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState
from trl import TrlParser

from conftest import REPO_ROOT, assert_resumed_weights, free_port, write_sft_examples
from test_grpo_recipe import CONFIGS, REWARD_MODULE, parse, write_problems
from trl_math.checkpoints import PENDING_VALIDATION_FILE, STAGING_DIR, TRAINING_TIME_FILE, publish
from trl_math.preemption import PREEMPTED_EXIT_CODE, Preemption
from trl_math.resume import RUN_FILE, last_checkpoint, resume_or_start_over

# Fields of metrics.jsonl that measure time, and so differ between any two runs.
TIMING = {"wall_time_s", "step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second",
          "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


# ---------------------------------------------------------------------------------------------- unit tests
def launch_args(output_dir: Path, resume: bool = True, resume_from_checkpoint=None):
    return SimpleNamespace(output_dir=str(output_dir), resume=resume, resume_from_checkpoint=resume_from_checkpoint)


def test_a_new_run_records_its_config_and_a_relaunch_resumes_from_the_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert resume_or_start_over(launch_args(out), "grpo", {"loss_type": "grpo_clip"}) is None
    assert json.loads((out / RUN_FILE).read_text()) == {"recipe": "grpo", "fields": {"loss_type": "grpo_clip"}}
    for step in (4, 12, 8):
        (out / f"checkpoint-{step}").mkdir()
    (out / STAGING_DIR / "checkpoint-16").mkdir(parents=True)  # a save killed half-way: never a checkpoint
    assert resume_or_start_over(launch_args(out), "grpo", {"loss_type": "grpo_clip"}) == str(out / "checkpoint-12")
    assert f"from {out / 'checkpoint-12'}" in capsys.readouterr().out


def test_a_changed_run_field_fails_naming_it(tmp_path):
    out = tmp_path / "run"
    resume_or_start_over(launch_args(out), "grpo", {"loss_type": "grpo_clip", "seed": 0, "group_size": 8})
    (out / "checkpoint-4").mkdir()
    with pytest.raises(ValueError, match=r"loss_type \('grpo_clip' in the run, 'no_baseline' now\); seed") as error:
        resume_or_start_over(launch_args(out), "grpo", {"loss_type": "no_baseline", "seed": 1, "group_size": 8})
    assert "group_size" not in str(error.value) and "--resume false" in str(error.value)
    with pytest.raises(ValueError, match=r"recipe \('grpo' in the run, 'sft' now\)"):
        resume_or_start_over(launch_args(out), "sft", {"loss_type": "grpo_clip", "seed": 0, "group_size": 8})


def grpo_launch(tmp_path, *overrides: str):
    """The parsed arguments of a tiny GRPO launch and the run config its recipe records (trl_math.resume)."""
    from trl_math.resume import run_config

    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    if not train.exists():
        write_problems(train, 16), write_problems(validation, 12)
    script, args, model = parse(CONFIGS / "tiny_cpu.yaml", "--train_source", str(train), "--eval_source",
                                str(validation), "--output_dir", str(tmp_path / "run"), *overrides)
    return (script, args, model), run_config(model, script, args, train=script.load_problems("train"),
                                             validation=script.load_problems("eval"))


def test_run_config_holds_every_field_but_those_a_relaunch_may_change(tmp_path):
    from trl_math.resume import MAY_CHANGE

    (script, args, model), config = grpo_launch(tmp_path)
    fields = {f.name for a in (script, args, model) for f in dataclasses.fields(a) if f.init}
    assert set(config) == fields - MAY_CHANGE - set(args.derived_fields) | {"train_data", "validation_sample"}
    assert {"generation_kwargs", "shuffle_dataset", "chat_template_kwargs", "eval_limit", "limit_seed",
            "limit_strategy", "eval_temperature", "eval_max_tokens", "use_vllm"} <= set(config)
    # What may change between segments leaves the recorded run as it is.
    allowed = ["--logging_steps", "5", "--max_steps", "3", "--save_steps", "2", "--max_train_hours", "2",
               "--eval_steps", "1", "--per_device_eval_batch_size", "2", "--report_to", "none", "--run_name", "again",
               "--final_full_eval", "true", "--vllm_gpu_memory_utilization", "0.5"]
    assert grpo_launch(tmp_path, *allowed)[1] == config


@pytest.mark.parametrize("change, named", [
    (["--generation_kwargs", '{"top_k": 5}'], "generation_kwargs ({"),
    (["--shuffle_dataset", "false"], "shuffle_dataset (True in the run, False now)"),
    (["--chat_template_kwargs", '{"enable_thinking": false}'], "chat_template_kwargs (None in the run"),
    (["--eval_limit", "4"], "eval_limit (8 in the run, 4 now); validation_sample (the content differs"),
    (["--limit_seed", "1"], "limit_seed (0 in the run, 1 now); validation_sample (the content differs"),
    (["--limit_strategy", "head"], "limit_strategy ('random' in the run, 'head' now); validation_sample"),
    (["--eval_temperature", "0.7"], "eval_temperature (1.0 in the run, 0.7 now)"),
    ("edit train.jsonl", "train_data (the content differs: fingerprint"),
])
def test_a_relaunch_that_changes_the_run_fails_at_start_up_naming_the_change(tmp_path, change, named):
    """The recipe compares the relaunch with the run before it loads a model: every setting outside the allow-list,
    and the content of the training data and of the validation sample."""
    import grpo as recipe

    (_, args, _), config = grpo_launch(tmp_path)
    resume_or_start_over(args, "grpo", config)  # the run's first launch
    (tmp_path / "run" / "checkpoint-4").mkdir()
    if change == "edit train.jsonl":
        rows = (tmp_path / "train.jsonl").read_text().splitlines()
        (tmp_path / "train.jsonl").write_text("\n".join(rows[:3] + [rows[3].replace('"6"', '"7"')] + rows[4:]) + "\n")
        change = []
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(ValueError, match="holds a run with other settings than this launch") as error:
        recipe.main(*grpo_launch(tmp_path, *change)[0])
    assert named in str(error.value)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before  # nothing touched


@pytest.mark.parametrize("resume", [False, True])
def test_starting_over_moves_the_previous_run_aside_whole(tmp_path, capsys, resume):
    out = tmp_path / "run"
    resume_or_start_over(launch_args(out), "sft", {"seed": 0})
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    if not resume:  # --resume false: even a run with checkpoints, whatever its settings
        (out / "checkpoint-4").mkdir()
    assert resume_or_start_over(launch_args(out, resume=resume), "sft", {"seed": 1}) is None
    (old,) = tmp_path.glob("run.replaced-*")
    assert (old / "metrics.jsonl").exists() and (old / "checkpoint-4").exists() is not resume
    assert sorted(p.name for p in out.iterdir()) == [RUN_FILE]
    assert json.loads((out / RUN_FILE).read_text())["fields"] == {"seed": 1}
    assert f"previous run moved to {old}" in capsys.readouterr().out


def test_a_folder_without_a_previous_run_is_left_as_it_is(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert resume_or_start_over(launch_args(out, resume=False), "sft", {}) is None
    assert (out / "notes.txt").exists() and not list(tmp_path.glob("run.replaced-*"))


def test_resume_false_contradicts_an_explicit_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="resume, resume_from_checkpoint"):
        resume_or_start_over(launch_args(tmp_path, resume=False, resume_from_checkpoint=str(tmp_path)), "sft", {})


def test_publish_replaces_a_checkpoint_of_the_same_step(tmp_path):
    staged, final = tmp_path / STAGING_DIR / "checkpoint-4", tmp_path / "checkpoint-4"
    final.mkdir()
    (final / "old.bin").write_text("old")
    staged.mkdir(parents=True)
    (staged / "new.bin").write_text("new")
    publish(staged, final)
    assert [p.name for p in final.iterdir()] == ["new.bin"] and not staged.exists()
    assert last_checkpoint(tmp_path) == str(final)


def test_checkpoints_reach_the_hub_once_published(tmp_path, tiny_checkpoint, monkeypatch):
    import fake_hub
    from datasets import Dataset

    from trl_math.sft_config import MathSFTConfig
    from trl_math.sft_trainer import MathSFTTrainer

    hub = fake_hub.install(monkeypatch)
    data = Dataset.from_list([{"prompt": "What is 1+1?", "response": " 2 </answer>", "ground_truth": "2"}] * 4)
    args = MathSFTConfig(output_dir=str(tmp_path / "run"), max_steps=2, save_steps=1, per_device_train_batch_size=2,
                         bf16=False, use_cpu=True, report_to="none", push_to_hub=True, hub_model_id="someone/run",
                         hub_strategy="checkpoint")
    MathSFTTrainer(model=str(tiny_checkpoint), args=args, train_dataset=data).train()
    checkpoints = [upload.files for upload in hub.uploads if upload.commit_message.endswith(", checkpoint")]
    assert [json.loads(files["trainer_state.json"])["global_step"] for files in checkpoints] == [1, 2]
    assert all(TRAINING_TIME_FILE in files for files in checkpoints)  # pushed whole, after the staging
    assert not any(name.startswith(STAGING_DIR) for upload in hub.uploads for name in upload.files)


def test_the_best_checkpoint_is_recorded_where_it_was_published(tmp_path, tiny_checkpoint):
    from datasets import Dataset

    from trl_math.sft_config import MathSFTConfig
    from trl_math.sft_trainer import MathSFTTrainer

    data = Dataset.from_list([{"prompt": "What is 1+1?", "response": " 2 </answer>", "ground_truth": "2"}] * 4)
    out = tmp_path / "run"
    args = MathSFTConfig(output_dir=str(out), max_steps=2, save_steps=1, eval_strategy="steps", eval_steps=1,
                         eval_max_tokens=4, num_logged_generations=0, metric_for_best_model="answer_accuracy",
                         load_best_model_at_end=True, per_device_train_batch_size=2, bf16=False, use_cpu=True,
                         report_to="none")
    trainer = MathSFTTrainer(model=str(tiny_checkpoint), args=args, train_dataset=data,
                             eval_dataset=Dataset.from_list([{"prompt": "What is 1+1?", "ground_truth": "2"}]))
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(out / "checkpoint-1")  # the first of two equal accuracies
    saved = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == str(out / "checkpoint-1")


class GuardedTrainer:
    """What Preemption.guard needs of a trainer: its args (steps_per_rollout_batch), add_callback and
    save_preempted_checkpoint (a Trainer's come from ResumableTrainerMixin, exercised by the launches below)."""

    def __init__(self, steps_per_rollout_batch: int):
        self.args = SimpleNamespace(steps_per_rollout_batch=steps_per_rollout_batch)
        self.callbacks, self.saved, self.validation_pending = [], [], False

    def add_callback(self, callback):
        self.callbacks.append(callback)

    def save_preempted_checkpoint(self, validation_pending):
        self.saved.append(validation_pending)
        return "checkpoint-4"


def test_sigterm_before_training_exits_75_at_once():
    with pytest.raises(SystemExit) as exit_:
        with Preemption():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # not reached: the handler raises as soon as the signal is handled
    assert exit_.value.code == PREEMPTED_EXIT_CODE and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_preemption_stops_only_at_a_resume_boundary_or_the_last_step():
    trainer = GuardedTrainer(steps_per_rollout_batch=4)
    with pytest.raises(SystemExit) as exit_:  # leaving a preempted launch exits with 75
        with Preemption() as preemption, preemption.guard(trainer):
            (callback,) = trainer.callbacks
            os.kill(os.getpid(), signal.SIGTERM)  # recorded, not fatal
            assert preemption.requested
            state = TrainerState(max_steps=10)
            for step in (1, 2, 3, 4):
                state.global_step, control = step, TrainerControl(should_evaluate=True)
                callback.on_step_end(None, state, control)
                assert control.should_training_stop is control.should_save is (step == 4)
                # the validation due at the boundary is left to the relaunch
                assert control.should_evaluate is (step != 4) and trainer.validation_pending is (step == 4)
            state.global_step, control = 10, TrainerControl()  # the run's last step ends mid-rollout-batch
            callback.on_step_end(None, state, control)
            assert control.should_save and control.should_training_stop
            state.global_step, control = 5, TrainerControl()  # after a validation or a save mid-rollout-batch: go on
            callback.on_evaluate(None, state, control)
            callback.on_save(None, state, control)
            assert not control.should_training_stop
            state.global_step = 8  # after a validation at a boundary: save and stop
            callback.on_evaluate(None, state, control)
            assert control.should_save and control.should_training_stop
            assert preemption.validation_safe_point(state)  # a validation at a boundary stops between chunks
            assert preemption.validation_safe_point(TrainerState(global_step=5, max_steps=10)) is None
            preemption.safe_point(validation_pending=True)  # raises Preempted, which the guard takes
    assert exit_.value.code == PREEMPTED_EXIT_CODE and trainer.saved == [True]


def test_the_prompt_sampler_shuffles_each_epoch_as_trl_does_whenever_it_starts():
    from trl.trainer.utils import RepeatSampler

    from trl_math.grpo_trainer import EpochSeededRepeatSampler

    options = {"data_source": range(10), "mini_repeat_count": 2, "batch_size": 2, "repeat_count": 3, "seed": 7}
    trl, ours = RepeatSampler(**options), EpochSeededRepeatSampler(**options)
    orders = []
    for epoch in range(3):  # a run that never stops: TRL's orders
        ours.set_epoch(epoch)
        orders.append(list(ours))
        assert orders[-1] == list(trl)
    assert orders[1] != orders[2]
    resumed = EpochSeededRepeatSampler(**options)  # a new process resuming in epoch 2
    resumed.set_epoch(2)
    assert list(resumed) == orders[2]


# ------------------------------------------------------------------------------------ real launches (CPU)
def recipe_env(*paths: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([*map(str, paths), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    return env


def run(command: list[str], env: dict, log: Path, until=None, sig=signal.SIGTERM, timeout: float = 300,
        group: bool = False):
    """Run `command` to its end; with `until`, send `sig` as soon as `until()` returns a value, and return it
    with the exit code (the value None: the process ended first). `group`: the command runs in a process group of
    its own, and the signal goes to the whole group (as torchrun passes a signal on to a rank's group)."""
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=group)
        seen, deadline = None, time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if until is not None and seen is None:
                seen = until()
                if seen is not None:
                    os.killpg(process.pid, sig) if group else process.send_signal(sig)
            time.sleep(0.02)
        if process.poll() is None:
            process.kill()
        return process.wait(), seen


def logged_steps(out: Path) -> list[int]:
    """The steps of the training-loss records of metrics.jsonl, in order."""
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines if '"loss"' in line]


def when_logged(out: Path, step: int):
    """A condition for `run`: the last logged training step once it is >= `step`."""
    return lambda: next((s for s in reversed(logged_steps(out)) if s >= step), None)


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def comparable_metrics(out: Path) -> list[dict]:
    """metrics.jsonl without what measures time, and without Trainer's end-of-train summaries (one per segment,
    each summing up its own segment)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records if "train_runtime" not in r]


# GRPO: 12 optimizer steps, 4 per rollout batch (8 rollouts, 4 per step, 2 epochs over each rollout batch), a
# checkpoint every rollout batch, validation at steps 8 and 12 (8 problems in 4 chunks of 2, up to 128 tokens each),
# a scripted reward with spread.
GRPO_STEPS, GRPO_BOUNDARY = 12, 4


@pytest.fixture(scope="module")
def grpo_setup(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo-resume")
    (root / "rewards_for_test.py").write_text(REWARD_MODULE)
    args = ["--config", str(CONFIGS / "tiny_cpu.yaml"), "--model_name_or_path", str(tiny_checkpoint),
            "--train_source", str(write_problems(root / "train.jsonl", 16)),
            "--eval_source", str(write_problems(root / "validation.jsonl", 12)),
            "--reward_funcs", "rewards_for_test.length_reward", "--loss_type", "grpo_clip",
            "--train_batch_size", "4", "--gradient_accumulation_steps", "2", "--epochs_per_rollout_batch", "2",
            "--max_steps", str(GRPO_STEPS), "--save_strategy", "steps", "--save_steps", str(GRPO_BOUNDARY),
            "--eval_steps", "8", "--eval_max_tokens", "128", "--per_device_eval_batch_size", "2"]
    return SimpleNamespace(root=root, args=args, env=recipe_env(root))


def grpo(setup, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "recipes" / "grpo.py"), *setup.args, "--output_dir", str(out), *extra]


@pytest.fixture(scope="module")
def grpo_uninterrupted(grpo_setup) -> Path:
    out = grpo_setup.root / "uninterrupted"
    code, _ = run(grpo(grpo_setup, out), grpo_setup.env, grpo_setup.root / "uninterrupted.log")
    assert code == 0, (grpo_setup.root / "uninterrupted.log").read_text()[-3000:]
    return out


@pytest.fixture(scope="module")
def grpo_preempted(grpo_setup):
    """A run sent SIGTERM once it has logged its first step (mid-rollout-batch): (output_dir, step seen, exit code)."""
    out = grpo_setup.root / "preempted"
    log = grpo_setup.root / "preempted.log"
    code, seen = run(grpo(grpo_setup, out), grpo_setup.env, log, until=when_logged(out, 1))
    assert seen is not None, f"the run ended before the signal:\n{log.read_text()[-3000:]}"
    return SimpleNamespace(out=out, seen=seen, code=code, log=log)


@pytest.mark.slow
def test_grpo_sigterm_finishes_the_rollout_batch_saves_and_exits_75(grpo_preempted):
    run_ = grpo_preempted
    assert run_.code == PREEMPTED_EXIT_CODE, run_.log.read_text()[-3000:]
    boundary = (run_.seen // GRPO_BOUNDARY + 1) * GRPO_BOUNDARY  # the end of the rollout batch after the signal
    assert checkpoint_steps(run_.out) == [boundary]
    assert logged_steps(run_.out) == list(range(1, boundary + 1))
    assert not (run_.out / STAGING_DIR).exists() and not (run_.out / "model.safetensors").exists()
    assert f"preempted: the relaunch continues from {run_.out / f'checkpoint-{boundary}'}" in run_.log.read_text()


@pytest.mark.slow
def test_grpo_relaunch_with_another_loss_type_fails_at_start_up(grpo_setup, grpo_preempted, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "recipes"))
    monkeypatch.syspath_prepend(str(grpo_setup.root))  # the scripted reward
    import grpo as recipe

    overrides = grpo_setup.args[2:]  # after --config tiny_cpu.yaml
    overrides[overrides.index("--loss_type") + 1] = "reinforce_with_baseline"
    before = sorted(p.name for p in grpo_preempted.out.iterdir())
    with pytest.raises(ValueError) as error:
        recipe.main(*parse(CONFIGS / "tiny_cpu.yaml", *overrides, "--output_dir", str(grpo_preempted.out)))
    assert "other settings than this launch: loss_type ('grpo_clip' in the run, 'reinforce_with_baseline' now). " \
        "Relaunch with the run's settings" in str(error.value)
    assert sorted(p.name for p in grpo_preempted.out.iterdir()) == before  # nothing touched


@pytest.mark.slow
def test_grpo_budget_counts_the_training_time_before_the_checkpoint(grpo_setup, grpo_preempted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(grpo_preempted.out, out)
    (checkpoint,) = checkpoint_steps(out)
    record = out / f"checkpoint-{checkpoint}" / TRAINING_TIME_FILE
    assert 0 < json.loads(record.read_text())["training_seconds"] < 600
    record.write_text(json.dumps({"training_seconds": 3600.0}))  # as if the first segment had trained an hour
    code, _ = run(grpo(grpo_setup, out, "--max_train_hours", "1", "--final_full_eval", "true"), grpo_setup.env,
                  tmp_path / "log")
    log = (tmp_path / "log").read_text()
    assert code == 0, log[-3000:]
    # The budget was spent before this segment: it trains no step and saves no checkpoint, says why, writes the
    # trained model and runs the final validation (it ends normally: a budget is no preemption). Counted from this
    # segment alone, it would have run all 12 steps.
    assert "max_train_hours: the budget of 1 h is spent (3600 s trained before this segment" in log
    assert logged_steps(out) == list(range(1, checkpoint + 1))
    assert checkpoint_steps(out) == [checkpoint]
    assert (out / "model.safetensors").exists()
    assert json.loads((out / "final_eval" / "summary.json").read_text())["n"] == 12


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_grpo_sigterm_to_the_process_group_during_validation(grpo_setup, grpo_uninterrupted, tiny_checkpoint, tmp_path):
    """torchrun passes a SIGTERM on to each rank's whole process group, grading workers included. Sent while the
    validation at step 8 (a rollout-batch boundary) is under way: the workers grade on, the run stops between two
    chunks of problems with checkpoint-8 and its validation pending, and exits with 75; the relaunch resumes that
    validation (its records kept) and ends equal to the uninterrupted run. No answer is ever scored "timeout"."""
    out = tmp_path / "run"
    records = out / "eval" / "eval-step000008" / "generations.jsonl"
    first_chunk = lambda: 8 if records.exists() and records.read_text().count("\n") >= 2 else None  # noqa: E731
    code, seen = run(grpo(grpo_setup, out), grpo_setup.env, tmp_path / "log1", until=first_chunk, group=True)
    log = (tmp_path / "log1").read_text()
    assert code == PREEMPTED_EXIT_CODE and seen == 8, log[-3000:]
    assert checkpoint_steps(out) == [4, 8] and (out / "checkpoint-8" / PENDING_VALIDATION_FILE).exists()
    partial = jsonl(records)
    assert 2 <= len(partial) < 8 and all(r["unscored"] is None for r in partial), partial
    assert logged_steps(out) == list(range(1, 9)) and not any("eval_n" in m for m in jsonl(out / "metrics.jsonl"))
    assert f"preempted: the relaunch continues from {out / 'checkpoint-8'}" in log

    code, _ = run(grpo(grpo_setup, out), grpo_setup.env, tmp_path / "log2")
    log = (tmp_path / "log2").read_text()
    assert code == 0, log[-3000:]
    assert f"from {out / 'checkpoint-8'}" in log and f"{len(partial)} of 8 problems already graded" in log
    assert not (out / "checkpoint-8" / PENDING_VALIDATION_FILE).exists()
    assert_resumed_weights(out, grpo_uninterrupted, before=tiny_checkpoint)
    assert comparable_metrics(out) == comparable_metrics(grpo_uninterrupted)  # step 8's validation logged once
    for step in (8, 12):  # seeded: the same responses as the uninterrupted run's, graded for real
        folder = f"eval/eval-step{step:06d}"
        assert jsonl(out / folder / "generations.jsonl") == jsonl(grpo_uninterrupted / folder / "generations.jsonl")
        assert json.loads((out / folder / "summary.json").read_text())["grading_timeouts"] == 0
    histories = [[{k: v for k, v in record.items() if k not in TIMING} for record in
                  json.loads((run_dir / "checkpoint-8" / "trainer_state.json").read_text())["log_history"]]
                 for run_dir in (out, grpo_uninterrupted)]
    assert histories[0] == histories[1]  # checkpoint-8 now records its validation, as the uninterrupted one does


@pytest.mark.slow
def test_grpo_sigterm_in_the_final_validation_exits_75_and_the_relaunch_resumes_it(grpo_setup, grpo_uninterrupted,
                                                                                   tmp_path):
    """A SIGTERM after the last step, while the final full validation runs (12 problems in chunks of 2): the run
    stops between two chunks and exits with 75 (it stopped early), keeping the records so far; the relaunch trains
    nothing, resumes that validation and ends with exit 0 and the records of a final validation never interrupted."""
    final = ("--final_full_eval", "true")  # a relaunch may add it (trl_math.resume.MAY_CHANGE)
    out, reference = tmp_path / "run", tmp_path / "reference"
    for run_dir in (out, reference):
        shutil.copytree(grpo_uninterrupted, run_dir)
    records = out / "final_eval" / "generations.jsonl"
    first_chunk = lambda: 1 if records.exists() and records.read_text().count("\n") >= 2 else None  # noqa: E731
    code, seen = run(grpo(grpo_setup, out, *final), grpo_setup.env, tmp_path / "log1", until=first_chunk)
    log = (tmp_path / "log1").read_text()
    assert code == PREEMPTED_EXIT_CODE and seen == 1, log[-3000:]
    partial = jsonl(records)
    assert 2 <= len(partial) < 12 and all(r["unscored"] is None for r in partial), partial
    assert not (out / "final_eval" / "summary.json").exists()

    code, _ = run(grpo(grpo_setup, out, *final), grpo_setup.env, tmp_path / "log2")
    log = (tmp_path / "log2").read_text()
    assert code == 0, log[-3000:]
    assert f"{len(partial)} of 12 problems already graded" in log
    code, _ = run(grpo(grpo_setup, reference, *final), grpo_setup.env, tmp_path / "log3")
    assert code == 0, (tmp_path / "log3").read_text()[-3000:]
    assert jsonl(records) == jsonl(reference / "final_eval" / "generations.jsonl")
    assert json.loads((out / "final_eval" / "summary.json").read_text())["n"] == 12
    assert logged_steps(out) == logged_steps(grpo_uninterrupted)  # nothing trained after the last step


@pytest.mark.slow
def test_grpo_sigkill_after_a_checkpoint_resumes_to_the_uninterrupted_run(grpo_setup, grpo_preempted,
                                                                         grpo_uninterrupted, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(grpo_preempted.out, out)  # segment 1: SIGTERM, checkpoint at the end of its rollout batch
    (first,) = checkpoint_steps(out)
    nxt = min(first + GRPO_BOUNDARY, GRPO_STEPS)
    # Segment 2: resumed by default, SIGKILLed once its next checkpoint is published.
    code, seen = run(grpo(grpo_setup, out), grpo_setup.env, tmp_path / "log2",
                     until=lambda: nxt if (out / f"checkpoint-{nxt}").exists() else None, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL and seen == nxt, (tmp_path / "log2").read_text()[-3000:]
    assert f"continuing the run in {out} from {out / f'checkpoint-{first}'}" in (tmp_path / "log2").read_text()
    # Segment 3: the same command again finishes the run.
    code, _ = run(grpo(grpo_setup, out), grpo_setup.env, tmp_path / "log3")
    assert code == 0, (tmp_path / "log3").read_text()[-3000:]
    assert f"from {out / f'checkpoint-{nxt}'}" in (tmp_path / "log3").read_text()

    assert_resumed_weights(out, grpo_uninterrupted, before=tiny_checkpoint)
    assert logged_steps(out) == list(range(1, GRPO_STEPS + 1))  # no step repeated or skipped
    assert comparable_metrics(out) == comparable_metrics(grpo_uninterrupted)
    rollouts = [(run_dir / "rollouts" / "rank0.jsonl").read_text() for run_dir in (out, grpo_uninterrupted)]
    assert rollouts[0] == rollouts[1]  # the killed segment's rollouts past its checkpoint were dropped
    seconds = [json.loads((out / f"checkpoint-{s}" / TRAINING_TIME_FILE).read_text())["training_seconds"]
               for s in checkpoint_steps(out)]
    assert seconds == sorted(seconds)  # the training clock continued across the segments


@pytest.mark.slow
def test_grpo_two_processes_stop_together_when_one_gets_sigterm(grpo_setup, tmp_path):
    import psutil

    out = tmp_path / "run"
    port = free_port()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), *grpo(grpo_setup, out)[1:]]

    def rank_1(launcher: psutil.Process):
        for worker in launcher.children():  # torchrun's workers
            try:
                if worker.environ().get("RANK") == "1":
                    return worker
            except psutil.Error:
                pass
        return None

    log = tmp_path / "log"
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=grpo_setup.env, stdout=output, stderr=subprocess.STDOUT)
        while process.poll() is None and not logged_steps(out):
            time.sleep(0.02)
        worker = rank_1(psutil.Process(process.pid))
        assert worker is not None, log.read_text()[-3000:]
        worker.send_signal(signal.SIGTERM)  # the non-main process only: the main process must stop too
        code = process.wait(timeout=300)
    # The main process, which got no signal, stopped at the same boundary: it saved and exited with 75 (the
    # launcher reports its workers' exit codes; the one that exits second may be ended by torchrun's SIGTERM
    # during its teardown, after the checkpoint).
    text = log.read_text()
    assert code != 0 and f"exitcode  : {PREEMPTED_EXIT_CODE}" in text, text[-3000:]
    (checkpoint,) = checkpoint_steps(out)
    assert f"preempted: the relaunch continues from {out / f'checkpoint-{checkpoint}'}" in text
    assert checkpoint % GRPO_BOUNDARY == 0 and logged_steps(out) == list(range(1, checkpoint + 1))


# SFT: 40 steps of 2 examples, no validation, no periodic checkpoint (preemption saves one anyway; the last step
# is saved).
@pytest.mark.slow
def test_sft_sigterm_saves_the_step_in_flight_and_the_relaunch_finishes(tiny_checkpoint, tmp_path):
    write_sft_examples(tmp_path / "sft.jsonl")
    out = tmp_path / "run"
    command = [sys.executable, str(REPO_ROOT / "recipes" / "sft.py"), "--model_name_or_path", str(tiny_checkpoint),
               "--dtype", "float32", "--sft_source", str(tmp_path / "sft.jsonl"), "--output_dir", str(out),
               "--bf16", "false", "--use_cpu", "true", "--report_to", "none", "--per_device_train_batch_size", "2",
               "--max_steps", "40", "--learning_rate", "1e-3", "--logging_steps", "1", "--save_steps", "1000",
               "--eval_strategy", "no"]
    code, seen = run(command, recipe_env(), tmp_path / "log1", until=when_logged(out, 2))
    assert code == PREEMPTED_EXIT_CODE and seen is not None, (tmp_path / "log1").read_text()[-3000:]
    (checkpoint,) = checkpoint_steps(out)
    assert seen < checkpoint < 40 and logged_steps(out) == list(range(1, checkpoint + 1))

    code, _ = run(command, recipe_env(), tmp_path / "log2")
    assert code == 0, (tmp_path / "log2").read_text()[-3000:]
    assert f"from {out / f'checkpoint-{checkpoint}'}" in (tmp_path / "log2").read_text()
    assert logged_steps(out) == list(range(1, 41))  # no step repeated or skipped
    assert (out / "model.safetensors").exists() and checkpoint_steps(out) == [checkpoint, 40]

    # A finished run relaunched (a requeue after the last checkpoint) resumes at max_steps and trains nothing.
    code, _ = run(command, recipe_env(), tmp_path / "log3")
    assert code == 0 and f"from {out / 'checkpoint-40'}" in (tmp_path / "log3").read_text()
    assert logged_steps(out) == list(range(1, 41))


# The supplement's trainers: the same restarts (instruction tuning: 8 steps, no periodic checkpoint, validation loss
# at steps 4 and 8; DPO: 6 steps, validation and a checkpoint every 2, the best one loaded at the end).
def supplement_command(recipe: str, checkpoint: Path, data: Path, out: Path) -> list[str]:
    common = ["--model_name_or_path", str(checkpoint), "--dtype", "float32", "--output_dir", str(out), "--bf16", "false",
              "--use_cpu", "true", "--report_to", "none", "--gradient_checkpointing", "false", "--logging_steps", "1",
              "--total_train_batch_size", "8", "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3"]
    if recipe == "instruction_tuning.py":
        extra = ["--train_source", str(data / "train.jsonl.gz"), "--eval_source", str(data / "test.jsonl.gz"),
                 "--seq_length", "32", "--max_steps", "8", "--eval_strategy", "steps", "--eval_steps", "4",
                 "--save_strategy", "no"]
    else:
        extra = ["--hh_sources", str(data / "hh"), "--validation_size", "8", "--per_device_eval_batch_size", "4",
                 "--max_steps", "6", "--eval_steps", "2", "--save_steps", "2"]
    return [sys.executable, str(REPO_ROOT / "recipes" / recipe), *common, *extra]


@pytest.fixture(scope="module")
def supplement_data(tmp_path_factory) -> Path:
    from test_supplement_dpo import write_hh
    from test_supplement_instruction_tuning import rows, write_gz
    from trl_math.supplement.hh import HH_SUBSETS

    root = tmp_path_factory.mktemp("supplement")
    write_gz(root / "train.jsonl.gz", rows(24))
    write_gz(root / "test.jsonl.gz", rows(6, offset=3))
    pairs = [(f"Do you like {thing} number {i}?", f"Yes, I like {thing}.", f"No. {thing} is bad.")
             for i in range(4) for thing in ("tea", "rain", "music", "snow", "bread", "maps", "bees", "clocks")]
    write_hh(root / "hh", {subset: pairs[k::4] for k, subset in enumerate(HH_SUBSETS)})
    return root


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["instruction_tuning.py", "dpo.py"])
def test_supplement_sigterm_saves_a_checkpoint_and_the_relaunch_ends_as_the_uninterrupted_run(
        recipe, supplement_data, tiny_checkpoint, tmp_path):
    reference, out = tmp_path / "uninterrupted", tmp_path / "run"
    code, _ = run(supplement_command(recipe, tiny_checkpoint, supplement_data, reference), recipe_env(), tmp_path / "log0")
    assert code == 0, (tmp_path / "log0").read_text()[-3000:]

    command = supplement_command(recipe, tiny_checkpoint, supplement_data, out)
    code, seen = run(command, recipe_env(), tmp_path / "log1", until=when_logged(out, 1))
    log = (tmp_path / "log1").read_text()
    assert code == PREEMPTED_EXIT_CODE and seen is not None, log[-3000:]
    stopped = checkpoint_steps(out)[-1]  # a checkpoint of the step where it stopped, whatever save_strategy says
    assert seen <= stopped < logged_steps(reference)[-1] and logged_steps(out) == list(range(1, stopped + 1))
    assert f"preempted: the relaunch continues from {out / f'checkpoint-{stopped}'}" in log

    code, _ = run(command, recipe_env(), tmp_path / "log2")
    log = (tmp_path / "log2").read_text()
    assert code == 0, log[-3000:]
    assert f"resume: continuing the run in {out} from {out / f'checkpoint-{stopped}'}" in log
    assert_resumed_weights(out, reference, before=tiny_checkpoint)  # torch.equal, every tensor
    assert comparable_metrics(out) == comparable_metrics(reference)  # no step repeated or skipped, same losses

    # The relaunch checks the run's settings and data: another DPO beta, or other instruction-tuning documents.
    import importlib

    module = importlib.import_module(recipe.removesuffix(".py"))  # recipes/ is on sys.path (test_grpo_recipe)
    changed = ["--beta", "0.5"] if recipe == "dpo.py" else ["--train_source", str(supplement_data / "test.jsonl.gz")]
    expected = "beta (0.1 in the run, 0.5 now)" if recipe == "dpo.py" else "train_data (the content differs"
    parser = TrlParser(module.ARGUMENTS)
    with pytest.raises(ValueError, match="holds a run with other settings than this launch") as error:
        module.main(*parser.parse_args_and_config(args=command[2:] + changed))
    assert expected in str(error.value)

"""Fault tolerance: resume by default, start over, run-config checks, atomic checkpoints, SIGTERM preemption and
the wall-clock budget across segments, down to real GRPO and SFT launches killed with SIGTERM and SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from conftest import REPO_ROOT, assert_resumed_weights, write_sft_examples
from test_grpo_recipe import CONFIGS, REWARD_MODULE, parse, write_problems
from trl_math.checkpoints import STAGING_DIR, TRAINING_TIME_FILE, publish
from trl_math.preemption import PREEMPTED_EXIT_CODE, PreemptionCallback
from trl_math.resume import RUN_FILE, last_checkpoint, resume_or_start_over

# Fields of metrics.jsonl that measure time, and so differ between any two runs.
TIMING = {"wall_time_s", "step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second",
          "eval_runtime"}


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


def test_preemption_stops_only_at_a_resume_boundary_or_the_last_step():
    callback = PreemptionCallback(boundary_steps=4)
    state, control = TrainerState(max_steps=10), TrainerControl()
    with callback.armed():
        os.kill(os.getpid(), signal.SIGTERM)  # recorded, not fatal
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and callback.requested
    for step in (1, 2, 3, 4):
        state.global_step = step
        callback.on_step_end(None, state, control)
        assert control.should_training_stop is (step == 4) and callback.preempted is (step == 4)
    late, control = PreemptionCallback(boundary_steps=4), TrainerControl()
    late.requested, state.global_step = True, 10  # the run's last step ends mid-rollout-batch
    late.on_step_end(None, state, control)
    assert control.should_save and control.should_training_stop


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


def run(command: list[str], env: dict, log: Path, until=None, sig=signal.SIGTERM, timeout: float = 300):
    """Run `command` to its end; with `until`, send `sig` as soon as `until()` returns a value, and return it
    with the exit code (the value None: the process ended first)."""
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        seen, deadline = None, time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if until is not None and seen is None:
                seen = until()
                if seen is not None:
                    process.send_signal(sig)
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
# checkpoint every rollout batch, validation at steps 8 and 12, a scripted reward with spread.
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
            "--eval_steps", "8"]
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
    assert f"preempted: saved checkpoint-{boundary}" in run_.log.read_text()


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
    code, _ = run(grpo(grpo_setup, out, "--max_train_hours", "1"), grpo_setup.env, tmp_path / "log")
    assert code == 0, (tmp_path / "log").read_text()[-3000:]
    # The budget was spent before this segment: it trains one step, saves and ends (normally: a budget is no
    # preemption); counted from this segment alone, it would have run all 12 steps.
    assert logged_steps(out) == list(range(1, checkpoint + 2))
    assert checkpoint_steps(out) == [checkpoint, checkpoint + 1]
    assert json.loads((out / f"checkpoint-{checkpoint + 1}" / TRAINING_TIME_FILE).read_text())["training_seconds"] > 3600
    assert (out / "model.safetensors").exists()


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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
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
    assert f"preempted: saved checkpoint-{checkpoint}" in text
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

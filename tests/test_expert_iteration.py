"""ExpertIterationTrainer end to end on a tiny model: the SFT set is exactly the reward-1 rollouts, and a
run preempted (SIGTERM) once its first EI step is saved exits with 75 and resumes to the same weights as an
uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, assert_resumed_weights
from scripted_rewards import even_length_reward
from trl_math.synthetic import make_arithmetic_splits

RECIPE = REPO_ROOT / "recipes" / "expert_iteration.py"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ei_yaml(tiny_checkpoint, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ei")
    splits = make_arithmetic_splits(11, {"train": 6, "validation": 3})
    for name, rows in splits.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = f"""
model_name_or_path: {tiny_checkpoint}
train_source: {root / 'train.jsonl'}
eval_source: {root / 'validation.jsonl'}
reward_fn: scripted_rewards.even_length_reward
n_ei_steps: 2
questions_per_step: 3
rollouts_per_question: 3
rollout_max_tokens: 8
eval_max_tokens: 8
entropy_sample_size: 4
per_device_train_batch_size: 2
per_device_eval_batch_size: 8
eval_chunk_size: 1
num_train_epochs: 2
learning_rate: 0.01
logging_steps: 1
seed: 5
use_cpu: true
bf16: false
report_to: none
num_logged_generations: 0
eval_on_start: true
"""
    path = root / "ei.yaml"
    path.write_text(config)
    return path


def _run_in_process(yaml_path: Path, output_dir: Path, *overrides: str):
    sys.path.insert(0, str(RECIPE.parent))
    try:
        import expert_iteration as recipe
    finally:
        sys.path.remove(str(RECIPE.parent))
    from trl import TrlParser

    parser = TrlParser((recipe.EIScriptArguments, recipe.ExpertIterationConfig, recipe.ModelConfig))
    recipe.main(*parser.parse_args_and_config(args=["--config", str(yaml_path), "--output_dir", str(output_dir),
                                                    *overrides]))


@pytest.fixture(scope="module")
def uninterrupted(ei_yaml, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("ei-run") / "out"
    _run_in_process(ei_yaml, output_dir)
    return output_dir


def test_two_ei_steps_train_on_exactly_the_reward_1_rollouts(uninterrupted):
    state = json.loads((uninterrupted / "ei_state.json").read_text())
    assert state["completed_steps"] == 2 and [record["step"] for record in state["log"]] == [0, 1, 2]  # 0: the base model
    for step in (0, 1, 2):  # the logged validation accuracy is the mean of a re-grade of the written records
        records = _jsonl(uninterrupted / "eval" / f"ei-step{step:06d}" / "generations.jsonl")
        assert len(records) == 3
        regraded = [even_length_reward(r["response"], r["ground_truth"])["answer_reward"] for r in records]
        assert state["log"][step]["eval_answer_accuracy"] == pytest.approx(sum(regraded) / 3)
    for step in (1, 2):
        step_dir = uninterrupted / f"ei_step_{step:02d}"
        rollouts = _jsonl(step_dir / "rollouts.jsonl")
        assert len(rollouts) == 9  # 3 questions x G=3
        # the verdicts are the scripted reward's, recomputed here on the saved text
        for row in rollouts:
            assert row["reward"] == even_length_reward(row["response"], row["ground_truth"])["reward"]
        expected = [{"prompt": r["prompt"], "response": r["response"], "ground_truth": r["ground_truth"]}
                    for r in rollouts if r["reward"] == 1]
        assert 0 < len(expected) < 9, "the scripted reward should keep some rollouts and drop others"
        assert _jsonl(step_dir / "sft_examples.jsonl") == expected
        record = state["log"][step]
        assert record["ei/rollouts"] == 9 and record["ei/kept"] == len(expected)
        assert record["ei/kept_fraction"] == pytest.approx(len(expected) / 9)
        assert record["ei/sft_loss"] is not None and record["ei/response_entropy"] > 0
    metrics = _jsonl(uninterrupted / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2] and metrics[2]["wall_time_s"] > metrics[1]["wall_time_s"]
    # the plot's axis: optimizer steps of the SFT phases so far, each 2 epochs of micro-batches of 2 kept rollouts
    kept = [state["log"][step]["ei/kept"] for step in (1, 2)]
    assert [m["optimizer_step"] for m in metrics] == [0, 2 * math.ceil(kept[0] / 2),
                                                     2 * math.ceil(kept[0] / 2) + 2 * math.ceil(kept[1] / 2)]


def _safetensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_sigterm_to_the_process_group_in_step_1s_validation_exits_75_and_resumes_to_identical_weights(
        ei_yaml, uninterrupted, tmp_path, capsys):
    """SIGTERM to the whole process group (grading workers included) while step 1, saved, is being validated: the
    workers grade on (no "timeout"), the run stops between two chunks of validation problems and exits with 75, and
    the relaunch finishes that validation (keeping its records), then trains step 2 only, to the uninterrupted run's
    weights and log. The grader is the uninterrupted run's, a quarter of a second slower per response."""
    output_dir = tmp_path / "out"
    overrides = ["--reward_fn", "scripted_rewards.slow_even_length_reward"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, str(RECIPE), "--config", str(ei_yaml), "--output_dir", str(output_dir),
                                *overrides], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    state_file, records = output_dir / "ei_state.json", output_dir / "eval" / "ei-step000001" / "generations.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if records.exists() and records.read_text().count("\n") >= 1:  # step 1 saved, its validation under way
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate()[0].decode(errors="replace")
    assert process.returncode == 75, output[-3000:]
    assert f"preempted: the relaunch continues from {output_dir / 'ei_step_01'}" in output
    state = json.loads(state_file.read_text())
    assert state["completed_steps"] == 1 and state["validated"] is False
    partial = _jsonl(records)
    assert 1 <= len(partial) < 3 and all(r["unscored"] is None for r in partial)
    step1 = output_dir / "ei_step_01" / "rollouts.jsonl"
    step1_mtime = step1.stat().st_mtime_ns

    _run_in_process(ei_yaml, output_dir, *overrides)
    printed = capsys.readouterr()
    assert f"resume: continuing the run in {output_dir} from {output_dir / 'ei_step_01'}" in printed.out
    assert f"{len(partial)} of 3 problems already graded" in printed.err

    state = json.loads(state_file.read_text())
    assert state["completed_steps"] == 2 and state["validated"] is True
    assert step1.stat().st_mtime_ns == step1_mtime, "step 1 ran again"
    reference = json.loads((uninterrupted / "ei_state.json").read_text())["log"]
    timings = ("wall_time_s", "eval_runtime")
    for ours, theirs in zip(state["log"], reference, strict=True):
        assert {k: v for k, v in ours.items() if k not in timings} == {k: v for k, v in theirs.items() if k not in timings}
    for step in (1, 2):
        folder = f"eval/ei-step{step:06d}/generations.jsonl"
        assert _jsonl(output_dir / folder) == _jsonl(uninterrupted / folder)  # graded for real: no "timeout"
    assert_resumed_weights(output_dir / "ei_step_02", uninterrupted / "ei_step_02", before=output_dir / "ei_step_01")


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO_ROOT / "recipes" / "configs" / "expert_iteration").glob("*.yaml")))
def test_every_ei_config_validates_the_base_model_first(config, tmp_path):
    from trl import ModelConfig, TrlParser

    sys.path.insert(0, str(RECIPE.parent))
    try:
        import expert_iteration as recipe
    finally:
        sys.path.remove(str(RECIPE.parent))
    data, args, _ = TrlParser((recipe.EIScriptArguments, recipe.ExpertIterationConfig, ModelConfig)).parse_args_and_config(
        args=["--config", str(REPO_ROOT / "recipes" / "configs" / "expert_iteration" / config), "--use_cpu", "true",
              "--bf16", "false", "--output_dir", str(tmp_path)])
    assert args.eval_on_start and data.eval_limit == 1024 and data.limit_strategy == "random"


def test_config_rejects_sft_data_selection_fields(tmp_path):
    from trl_math.expert_iteration import ExpertIterationConfig

    with pytest.raises(ValueError, match="filter_correct"):
        ExpertIterationConfig(output_dir=str(tmp_path), filter_correct=True, use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="rollouts_per_question"):
        ExpertIterationConfig(output_dir=str(tmp_path), rollouts_per_question=0, use_cpu=True, bf16=False)


def test_two_process_launch_shards_rollouts_and_finishes_cleanly(ei_yaml, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (two gloo processes on CPU): rollouts are sampled
    in shards and gathered in question order, the SFT phase runs under DDP, and both processes exit 0."""
    output_dir = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--main_process_port", "0", str(RECIPE), "--config", str(ei_yaml),
         "--output_dir", str(output_dir)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((output_dir / "ei_state.json").read_text())
    assert state["completed_steps"] == 2
    for step in (1, 2):
        rollouts = _jsonl(output_dir / f"ei_step_{step:02d}" / "rollouts.jsonl")
        prompts = [r["prompt"] for r in rollouts]
        assert len(rollouts) == 9 and prompts == [p for p in dict.fromkeys(prompts) for _ in range(3)]
        kept = [{"prompt": r["prompt"], "response": r["response"], "ground_truth": r["ground_truth"]}
                for r in rollouts if even_length_reward(r["response"], r["ground_truth"])["reward"] == 1]
        examples = output_dir / f"ei_step_{step:02d}" / "sft_examples.jsonl"
        assert (_jsonl(examples) if examples.exists() else []) == kept


def test_push_to_hub_uploads_the_final_model_and_a_card(ei_yaml, uninterrupted, tiny_checkpoint, monkeypatch):
    import fake_hub
    from datasets import Dataset

    from trl_math.expert_iteration import ExpertIterationConfig, ExpertIterationTrainer

    hub = fake_hub.install(monkeypatch)
    args = ExpertIterationConfig(output_dir=str(uninterrupted), n_ei_steps=2, hub_model_id="someone/ei-run",
                                 use_cpu=True, bf16=False, report_to="none")
    trainer = ExpertIterationTrainer(str(tiny_checkpoint), args, Dataset.from_list([{"prompt": "p", "ground_truth": "1"}]),
                                     reward_fn=even_length_reward)
    assert trainer.completed_steps == 2  # resumed: nothing left to run
    trainer.push_to_hub()
    (upload,) = hub.uploads
    assert upload.repo_id == "someone/ei-run"
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl", "README.md"} <= set(upload.files)
    final = load_file(uninterrupted / "final" / "model.safetensors")
    assert all(torch.equal(t, _safetensors(uninterrupted / "ei_step_02")[n]) for n, t in final.items())
    card = upload.files["README.md"].decode()
    accuracy = json.loads((uninterrupted / "ei_state.json").read_text())["log"][-1]["eval_answer_accuracy"]
    assert "**expert_iteration_experiment**" in card and f"| eval_answer_accuracy | {accuracy:.4f} |" in card
    assert f"local checkpoint `{tiny_checkpoint.name}`" in card

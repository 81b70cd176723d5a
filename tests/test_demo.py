"""The embedded default demo runs end to end through the recipe (shrunk to seconds: the full demo's learning
figures are measured by benchmarks/demo_learning.py, not asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_recipe_demo_runs_end_to_end_and_writes_summary_and_plot(tmp_path):
    out = tmp_path / "demo"
    previous = out / "grpo" / "checkpoint-999"  # a previous demo's files: kept, but not mixed into this run's
    previous.mkdir(parents=True)
    cmd = [sys.executable, str(REPO_ROOT / "recipes" / "grpo.py"), "--demo", "--output_dir", str(out), "--seed", "3",
           "--train_problems", "200", "--validation_problems", "8", "--test_problems", "8", "--test_samples", "1",
           "--sft_max_steps", "4", "--sft_eval_steps", "2", "--sft_batch_size", "16", "--hidden_size", "32",
           "--num_layers", "1", "--grpo_seconds", "6", "--grpo_eval_steps", "2", "--prompts_per_step", "2",
           "--group_size", "4", "--max_completion_length", "8"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert 1 <= summary["warm_start_sft_steps"] <= 4 and summary["grpo_steps"] >= 1
    for key in ("held_out_accuracy_before_grpo", "held_out_accuracy_after_grpo"):
        assert 0.0 <= summary[key] <= 1.0
    assert (out / "validation_reward.png").stat().st_size > 10_000
    records = [json.loads(line) for line in (out / "test-after" / "generations.jsonl").open()]
    assert len(records) == 8 and summary["held_out_accuracy_after_grpo"] == sum(r["answer_reward"] for r in records) / 8
    assert "held-out answer accuracy" in result.stdout
    (moved,) = tmp_path.glob("demo.replaced-*")
    assert (moved / "grpo" / "checkpoint-999").is_dir() and not previous.exists()
    assert f"the previous demo in {out} moved to {moved}" in result.stdout

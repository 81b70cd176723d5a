"""The validation sample on the course's real MATH file: with the shipped configs' defaults, GRPO, SFT, expert
iteration and recipes/evaluate.py validate on the same seeded random problems, and write the same id list."""

from __future__ import annotations

import json
import subprocess
import sys

from datasets import Dataset
from trl import ModelConfig, TrlParser

from conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "recipes" / "configs"
CPU = ["--use_cpu", "true", "--bf16", "false", "--report_to", "none"]
sys.path.insert(0, str(REPO_ROOT / "recipes"))


def _ids(output_dir) -> list:
    return json.loads((output_dir / "validation_problems.json").read_text())["problem_ids"]


def test_every_trainer_and_the_evaluation_validate_on_the_same_problems(tiny_checkpoint, shared_data_dir, tmp_path):
    from expert_iteration import EIScriptArguments
    from grpo import GRPOScriptArguments

    from trl_math.data import MathDataArguments
    from trl_math.expert_iteration import ExpertIterationConfig, ExpertIterationTrainer
    from trl_math.grading import make_trl_reward_funcs
    from trl_math.grpo_config import MathGRPOConfig
    from trl_math.grpo_trainer import MathGRPOTrainer
    from trl_math.sft_config import MathSFTConfig
    from trl_math.sft_data import SFTDataArguments
    from trl_math.sft_trainer import MathSFTTrainer

    validation = str(shared_data_dir / "math" / "validation.jsonl")
    data = ["--eval_source", validation, "--model_name_or_path", str(tiny_checkpoint)]

    grpo_data, grpo_args, _ = TrlParser((GRPOScriptArguments, MathGRPOConfig, ModelConfig)).parse_args_and_config(
        ["--config", str(CONFIGS / "grpo" / "baseline.yaml"), *data, *CPU, "--use_vllm", "false",
         "--output_dir", str(tmp_path / "grpo"), "--rollout_batch_size", "8", "--group_size", "4",
         "--train_batch_size", "8", "--gradient_accumulation_steps", "2"])
    problems = grpo_data.load_problems("eval")
    MathGRPOTrainer(str(tiny_checkpoint), make_trl_reward_funcs(), grpo_args,
                    train_dataset=problems.select(range(8)), eval_dataset=problems)

    _, sft_data, sft_args, _ = TrlParser((SFTDataArguments, MathDataArguments, MathSFTConfig, ModelConfig)) \
        .parse_args_and_config(["--config", str(CONFIGS / "sft" / "full.yaml"), *data, *CPU, "--use_vllm", "false",
                                "--output_dir", str(tmp_path / "sft")])
    examples = Dataset.from_list([{"prompt": "p", "response": "r", "ground_truth": "1"}])
    MathSFTTrainer(str(tiny_checkpoint), sft_args, train_dataset=examples, eval_dataset=sft_data.load_problems("eval"))

    ei_data, ei_args, _ = TrlParser((EIScriptArguments, ExpertIterationConfig, ModelConfig)).parse_args_and_config(
        ["--config", str(CONFIGS / "expert_iteration" / "db512_g4_e1.yaml"), *data, *CPU, "--use_vllm", "false",
         "--output_dir", str(tmp_path / "ei")])
    ExpertIterationTrainer(str(tiny_checkpoint), ei_args, problems, eval_dataset=ei_data.load_problems("eval"))

    evaluation = subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes" / "evaluate.py"), "--config",
         str(CONFIGS / "evaluate" / "math_baseline.yaml"), *data, "--eval_limit", "1024", "--backend", "transformers",
         "--dtype", "float32", "--max_tokens", "1", "--min_tokens", "0", "--batch_size", "16",
         "--output_dir", str(tmp_path / "evaluate")], capture_output=True, text=True, timeout=600)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]

    chosen = _ids(tmp_path / "grpo")
    assert len(chosen) == len(set(chosen)) == 1024 and all(i.startswith("test/") for i in chosen)
    for run in ("sft", "ei", "evaluate"):
        assert _ids(tmp_path / run) == chosen, run
    rows = [json.loads(line) for line in open(validation, encoding="utf-8")]
    position = {row["unique_id"]: i for i, row in enumerate(rows)}
    assert [position[i] for i in chosen] == sorted(position[i] for i in chosen)  # kept in file order
    records = [json.loads(line) for line in (tmp_path / "evaluate" / "generations.jsonl").read_text().splitlines()]
    assert [r["problem_id"] for r in records] == chosen
    subjects = json.loads((tmp_path / "grpo" / "validation_problems.json").read_text())["subject_counts"]
    assert len(subjects) == 7 and min(subjects.values()) > 80  # every subject, not the head's two

"""Every shipped config (recipes/configs/**) reads the course's own files, as they are, up to the first training step.

The configs name the course's paths (data/MATH/train.jsonl ...); here they point at the same files under
../shared/data. The training recipes' `build` runs everything before the first step (the run's settings, the data,
the trainer) with a tiny model in place of the course's and without vLLM, then the test reads the data summary the
run recorded; the evaluation recipes read their data with the call their `run` makes. The course's train.jsonl has
two rows with an empty answer (lines 7037 and 7437), which the course cannot grade: left out and counted.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import sys

import pytest
from trl import ModelConfig, TrlParser

from conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "recipes" / "configs"
RECIPES = REPO_ROOT / "recipes"
# The course's paths, as the configs name them, and the same files under ../shared/data.
SHARED_PATHS = {
    "data/MATH/train.jsonl": "math/train.jsonl",
    "data/MATH/validation.jsonl": "math/validation.jsonl",
    "data/MATH/sft.jsonl": "math/sft.jsonl",
    "data/gsm8k/test.jsonl": "gsm8k/test.jsonl",
    "data/mmlu": "supplement/mmlu",
    "data/alpaca_eval/alpaca_eval.jsonl": "supplement/alpaca_eval/alpaca_eval.jsonl",
    "data/simple_safety_tests/simple_safety_tests.csv": "supplement/simple_safety_tests/simple_safety_tests.csv",
}
# Configs whose data the course ships outside the files copied to ../shared/data.
NOT_SHARED = {
    "dpo/hh.yaml": "Anthropic HH (data/hh, the course cluster's /data/a5-alignment/hh) is not under ../shared/data",
    "instruction_tuning/llama31_8b.yaml": "the instruction-tuning data (safety_augmented_ultrachat_200k_single_turn) "
                                          "is not under ../shared/data",
}
CPU = ["--use_cpu", "true", "--bf16", "false", "--dtype", "float32", "--use_vllm", "false", "--report_to", "none"]
# What the course's files hold: rows, and the places of the rows with an empty answer.
TRAIN_ROWS, VALIDATION_ROWS, SFT_ROWS = 7500, 5000, 1767
EMPTY_ANSWER_LINES = [7037, 7437]
ZERO_SHOT_EXAMPLES = {"mmlu": 14042, "gsm8k": 1319, "alpaca_eval": 805, "sst": 100}
CONFIG_NAMES = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*.yaml"))


def recipe(name: str):
    """recipes/<name>.py as a module (registered in sys.modules: its dataclasses look their module up there)."""
    module_name = f"recipe_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, RECIPES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def parse(types, config: str, data_dir, *overrides: str):
    """The config parsed by its recipe's parser, its course paths replaced with the shared files."""
    text = (CONFIGS / config).read_text(encoding="utf-8")
    paths = []
    for course, shared in SHARED_PATHS.items():
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if value.split("#")[0].strip().strip("\"'") == course:
                paths += [f"--{key.strip()}", str(data_dir / shared)]
    assert paths, f"{config} names none of the course's files"
    return TrlParser(types).parse_args_and_config(["--config", str(CONFIGS / config), *paths, *overrides])


def summary_of(output_dir) -> dict:
    return json.loads((output_dir / "data_summary.json").read_text(encoding="utf-8"))


def check_math_summary(entry: dict, path, rows: int, used: int, empty_lines=()):
    assert entry == {
        "source": str(path), "rows": rows, "empty_answer": {"count": len(empty_lines), "at": [f"{path}:{n}" for n in empty_lines]},
        "malformed_skipped": {"count": 0, "at": []}, "problems": rows - len(empty_lines), "used": used}


def test_every_config_is_checked():
    folders = {"grpo", "sft", "expert_iteration", "evaluate", "zero_shot", "dpo", "instruction_tuning"}
    assert {name.split("/")[0] for name in CONFIG_NAMES} == folders
    assert set(NOT_SHARED) <= set(CONFIG_NAMES)


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_config_reads_the_courses_files(config, shared_data_dir, tiny_checkpoint, tmp_path, capsys):
    if config in NOT_SHARED:
        pytest.skip(NOT_SHARED[config])
    kind, out = config.split("/")[0], tmp_path / "run"
    train, validation = shared_data_dir / "math" / "train.jsonl", shared_data_dir / "math" / "validation.jsonl"
    training = ["--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(out), *CPU]
    if kind == "grpo":
        from trl_math.grpo_config import MathGRPOConfig

        module = recipe("grpo")
        sources = ["--train_source", str(train), "--eval_source", str(validation)] if config == "grpo/tiny_cpu.yaml" else []
        if sources:  # the CPU config leaves its data to the command line
            script_args, args, model_args = TrlParser((module.GRPOScriptArguments, MathGRPOConfig, ModelConfig)) \
                .parse_args_and_config(["--config", str(CONFIGS / config), *sources, *training])
        else:
            script_args, args, model_args = parse((module.GRPOScriptArguments, MathGRPOConfig, ModelConfig), config,
                                                  shared_data_dir, *training)
        trainer, checkpoint = module.build(script_args, args, model_args)
        assert checkpoint is None and len(trainer.train_dataset) == TRAIN_ROWS - 2
        eval_used = script_args.eval_limit
    elif kind == "expert_iteration":
        from trl_math.expert_iteration import ExpertIterationConfig

        module = recipe("expert_iteration")
        parsed = parse((module.EIScriptArguments, ExpertIterationConfig, ModelConfig), config, shared_data_dir, *training)
        trainer = module.build(*parsed)
        assert len(trainer.train_dataset) == TRAIN_ROWS - 2
        eval_used = parsed[0].eval_limit
    elif kind == "sft":
        from trl_math.data import MathDataArguments
        from trl_math.sft_config import MathSFTConfig
        from trl_math.sft_data import SFTDataArguments

        parsed = parse((SFTDataArguments, MathDataArguments, MathSFTConfig, ModelConfig), config, shared_data_dir,
                       *training)
        trainer, _ = recipe("sft").build(*parsed)
        selected = json.loads((out / "sft_data.json").read_text())
        assert selected["num_examples"] == SFT_ROWS and len(trainer.train_dataset) == selected["num_selected"]
        assert selected["num_selected"] == (parsed[2].num_unique_examples or selected.get("num_correct", SFT_ROWS))
        assert summary_of(out).keys() == {"eval"}  # the SFT examples' counts are sft_data.json's
        check_math_summary(summary_of(out)["eval"], validation, VALIDATION_ROWS, parsed[1].eval_limit)
        return
    elif kind == "evaluate":
        from trl_math.sampling import SamplingConfig

        args, _ = parse((recipe("evaluate").EvaluateArguments, SamplingConfig), config, shared_data_dir)
        problems = args.load_problems("eval", output_dir=out)  # what recipes/evaluate.py's run() reads
        assert len(problems) == VALIDATION_ROWS
        check_math_summary(summary_of(out)["eval"], validation, VALIDATION_ROWS, VALIDATION_ROWS)
        return
    else:
        from trl_math.supplement.benchmarks import load_benchmark
        from trl_math.supplement.zero_shot import ZeroShotArguments, ZeroShotSamplingConfig

        args, _ = parse((ZeroShotArguments, ZeroShotSamplingConfig), config, shared_data_dir)
        # what run_zero_shot reads
        examples = load_benchmark(args.benchmark, args.data_path, split=args.split, limit=args.limit,
                                  limit_seed=args.limit_seed)
        assert len(examples) == ZERO_SHOT_EXAMPLES[args.benchmark]
        return
    summary = summary_of(out)
    check_math_summary(summary["train"], train, TRAIN_ROWS, TRAIN_ROWS - 2, EMPTY_ANSWER_LINES)
    check_math_summary(summary["eval"], validation, VALIDATION_ROWS, eval_used)
    assert f"left out 2 rows of {train} whose 'answer' is empty" in capsys.readouterr().err
    del trainer
    gc.collect()

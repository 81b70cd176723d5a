"""The shipped recipe configs parse with their recipes' parsers and say what their names say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from trl import ModelConfig, TrlParser

from trl_math.data import MathDataArguments
from trl_math.sampling import SamplingConfig
from trl_math.sft_config import MathSFTConfig
from trl_math.sft_data import SFTDataArguments

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"
CPU = ["--bf16", "false", "--use_cpu", "true"]  # bf16 fails to validate on a machine without a GPU
SIZES = {"size_128": 128, "size_256": 256, "size_512": 512, "size_1024": 1024, "full": None, "filtered": None}


def test_the_sft_configs_are_the_size_sweep_and_the_filtered_run():
    assert sorted(p.stem for p in (CONFIGS / "sft").glob("*.yaml")) == sorted(SIZES)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_sft_config(name, tmp_path):
    parser = TrlParser((SFTDataArguments, MathDataArguments, MathSFTConfig, ModelConfig))
    sft, data, args, model = parser.parse_args_and_config(
        ["--config", str(CONFIGS / "sft" / f"{name}.yaml"), *CPU, "--output_dir", str(tmp_path)]
    )
    assert args.num_unique_examples == SIZES[name]
    assert args.filter_correct == (name == "filtered")
    assert (sft.sft_source, data.eval_source, data.prompt) == ("data/MATH/sft.jsonl", "data/MATH/validation.jsonl", "r1_zero")
    assert model.model_name_or_path == "Qwen/Qwen2.5-Math-1.5B" and args.max_grad_norm == 1.0 and args.use_vllm
    assert args.eval_sampling() == SamplingConfig(seed=0)  # T=1, top_p=1, 1024 tokens, stop after </answer>
    assert args.eval_strategy == "steps" and data.eval_limit == 1024


@pytest.mark.parametrize("name", ["math_baseline", "question_only"])
def test_evaluate_config(name, monkeypatch):
    spec = importlib.util.spec_from_file_location("evaluate_recipe", CONFIGS.parent / "evaluate.py")
    recipe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "evaluate_recipe", recipe)  # dataclasses look their module up there
    spec.loader.exec_module(recipe)
    args, sampling = TrlParser((recipe.EvaluateArguments, SamplingConfig)).parse_args_and_config(
        ["--config", str(CONFIGS / "evaluate" / f"{name}.yaml")]
    )
    assert args.prompt == name.replace("math_baseline", "r1_zero") and args.eval_limit is None
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens, sampling.min_tokens) == (1.0, 1.0, 1024, 4)
    assert sampling.stop == (["</answer>"] if name == "math_baseline" else [])

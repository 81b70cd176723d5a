"""Model cards and Hub pushes, against a fake Hub API that records what would be uploaded."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset
from trl import SFTConfig

import fake_hub
from trl_math.model_card import latest_validation, non_default_fields, render_model_card
from trl_math.sft_config import MathSFTConfig
from trl_math.sft_trainer import MathSFTTrainer


def test_render_model_card_lists_problem_model_config_and_accuracy(tmp_path):
    card = render_model_card(
        problem="grpo_learning_rate", base_model="Qwen/Qwen2.5-Math-1.5B", config={"learning_rate": 3e-5},
        validation={"eval_answer_reward": 0.4123}, command="recipes/grpo.py --config recipes/configs/grpo/lr.yaml",
    )
    assert "**grpo_learning_rate**" in card
    assert "`Qwen/Qwen2.5-Math-1.5B`" in card
    assert "| eval_answer_reward | 0.4123 |" in card
    assert '"learning_rate": 3e-05' in card
    assert "recipes/grpo.py --config recipes/configs/grpo/lr.yaml" in card
    # a local checkpoint is named by its folder only
    local = render_model_card(problem="p", base_model=str(tmp_path), config={}, validation={})
    assert str(tmp_path) not in local and tmp_path.name in local and "No validation" in local


def test_latest_validation_takes_the_last_value_of_each_key():
    records = [{"eval_answer_reward": 0.1}, {"loss": 1.0}, {"eval_answer_reward": 0.3, "eval_format_reward": 0.9}]
    assert latest_validation(records) == {"eval_answer_reward": 0.3, "eval_format_reward": 0.9}


def test_sft_push_to_hub_uploads_weights_and_a_card_with_validation(tmp_path, tiny_checkpoint, monkeypatch):
    hub = fake_hub.install(monkeypatch)
    data = Dataset.from_list([{"prompt": "What is 1+1?", "response": " 2 </answer>", "ground_truth": "2"}] * 4)
    args = MathSFTConfig(output_dir=str(tmp_path / "sft-run"), max_steps=1, per_device_train_batch_size=2,
                         bf16=False, use_cpu=True, report_to="none", hub_model_id="someone/tiny-sft", save_strategy="no",
                         learning_rate=1e-3)
    trainer = MathSFTTrainer(model=str(tiny_checkpoint), args=args, train_dataset=data)
    trainer.train()
    trainer.log({"eval_answer_reward": 0.25})
    trainer.push_to_hub()

    assert hub.repos == ["someone/tiny-sft"]
    (upload,) = hub.uploads
    assert upload.repo_id == "someone/tiny-sft"
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= set(upload.files)
    card = upload.files["README.md"].decode()
    assert "**sft_experiment**" in card
    assert "| eval_answer_reward | 0.2500 |" in card
    assert f"local checkpoint `{tiny_checkpoint.name}`" in card and str(tiny_checkpoint) not in card
    config = json.loads(card.split("```json", 1)[1].split("```", 1)[0])
    assert config["learning_rate"] == pytest.approx(1e-3) and config["max_steps"] == 1
    assert not any("token" in key for key in config)


def test_non_default_fields_skip_tokens():
    args = SFTConfig(output_dir="out", learning_rate=1e-3, hub_token="secret", use_cpu=True, bf16=False)
    fields = non_default_fields(args)
    assert fields["learning_rate"] == 1e-3 and "hub_token" not in fields

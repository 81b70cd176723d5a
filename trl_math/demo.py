"""The embedded default: the whole pipeline learning on CPU, with no GPU, no Hub and no data files.

`python recipes/grpo.py` (or `accelerate launch recipes/grpo.py`) with no arguments runs it:

1. a seeded synthetic task (sums of two two-digit numbers, trl_math.synthetic) in the r1_zero answer
   format, with a short r1_zero-style preamble (the full one is 100 tokens: 4x slower on 2 cores);
2. a byte-level BPE and a 0.7M-parameter Qwen2 built locally;
3. a warm start with MathSFTTrainer on correct traces, stopped once sampled validation accuracy reaches
   `warm_start_accuracy` (overshooting leaves GRPO nothing to improve);
4. GRPO with MathGRPOTrainer (the assignment's loss, r1_zero reward) for `grpo_seconds`;
5. held-out answer accuracy before and after GRPO (`test_samples` samples per problem at temperature
   1.0), printed and written to demo_summary.json, and a PNG of validation reward against step.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEMO_PROMPT = "A conversation between User and Assistant. The Assistant thinks, then answers.\nUser: {question}\nAssistant: <think>"


@dataclass
class DemoConfig:
    """Settings of the CPU learning demo (defaults: ~6 minutes on 2 cores)."""

    seed: int = field(default=0, metadata={"help": "Seed of the task, the model, SFT, GRPO and sampling."})
    output_dir: str = field(default="runs/demo", metadata={"help": "Where the models, logs and plot go."})
    train_problems: int = field(default=3000, metadata={"help": "Training problems (SFT traces and GRPO prompts)."})
    validation_problems: int = field(default=100, metadata={"help": "Validation problems (warm-start stop, GRPO curve)."})
    test_problems: int = field(default=200, metadata={"help": "Held-out problems for the before/after accuracy."})
    test_samples: int = field(default=4, metadata={"help": "Samples per held-out problem (temperature 1.0)."})
    hidden_size: int = field(default=128, metadata={"help": "Model width."})
    num_layers: int = field(default=4, metadata={"help": "Transformer layers."})
    sft_learning_rate: float = field(default=1e-3, metadata={"help": "Warm-start learning rate."})
    sft_batch_size: int = field(default=64, metadata={"help": "Warm-start batch size."})
    sft_max_steps: int = field(default=1000, metadata={"help": "Warm-start step limit."})
    sft_eval_steps: int = field(default=25, metadata={"help": "Check validation accuracy every N warm-start steps."})
    warm_start_accuracy: float = field(default=0.35, metadata={"help": "Stop the warm start at this validation accuracy."})
    grpo_seconds: float = field(default=240.0, metadata={"help": "Wall-clock budget of GRPO."})
    grpo_learning_rate: float = field(default=1e-4, metadata={"help": "GRPO learning rate."})
    prompts_per_step: int = field(default=8, metadata={"help": "Questions per GRPO rollout batch."})
    group_size: int = field(default=8, metadata={"help": "Completions per question."})
    max_completion_length: int = field(default=24, metadata={"help": "Most tokens per completion."})
    grpo_eval_steps: int = field(default=20, metadata={"help": "Validate every N GRPO steps (the plotted curve)."})


def _rows(problems, template, with_trace=False):
    from .data import format_prompt

    rows = []
    for p in problems:
        row = {"prompt": format_prompt(template, p["problem"]), "ground_truth": p["answer"]}
        if with_trace:
            row["response"] = p["trace"]
        rows.append(row)
    return rows


def held_out_accuracy(model, tokenizer, rows, samples: int, max_tokens: int, seed: int, output_dir: Path) -> float:
    """Mean answer reward of `samples` sampled responses (temperature 1.0) per held-out problem."""
    from .evaluation import evaluate
    from .grading import r1_zero_reward_fn
    from .sampling import SamplingConfig, TransformersSampler

    prompts = [r["prompt"] for r in rows for _ in range(samples)]
    truths = [r["ground_truth"] for r in rows for _ in range(samples)]
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=max_tokens, min_tokens=1, seed=seed)
    sampler = TransformersSampler(model, tokenizer, sampling, batch_size=200)
    return evaluate(sampler, r1_zero_reward_fn, prompts, truths, output_dir).summary["answer_accuracy"]


def run_demo(config: DemoConfig) -> dict:
    """Run the demo end to end; returns (and writes) the summary."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from .grading import make_trl_reward_funcs
    from .grpo_config import MathGRPOConfig
    from .grpo_trainer import MathGRPOTrainer
    from .plotting import plot_runs
    from .resume import move_aside
    from .sft_config import MathSFTConfig
    from .sft_trainer import MathSFTTrainer
    from .synthetic import make_arithmetic_splits
    from .tiny_models import build_tiny_qwen2, train_bpe_tokenizer

    start = time.monotonic()
    out = Path(config.output_dir)
    if out.is_dir() and any(out.iterdir()):  # each demo starts over; the previous one is kept whole beside it
        print(f"[demo] the previous demo in {out} moved to {move_aside(out)}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    splits = make_arithmetic_splits(config.seed, {"train": config.train_problems, "validation": config.validation_problems,
                                                  "test": config.test_problems})
    train = _rows(splits["train"], DEMO_PROMPT, with_trace=True)
    validation = Dataset.from_list(_rows(splits["validation"], DEMO_PROMPT))
    test = _rows(splits["test"], DEMO_PROMPT)
    tokenizer = train_bpe_tokenizer([r["prompt"] + r["response"] for r in train], vocab_size=400)
    model = build_tiny_qwen2(tokenizer, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                             num_attention_heads=4, num_key_value_heads=4, seed=config.seed)
    base_dir = out / "base-model"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    print(f"[demo] task: {len(train)} training sums, model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters, vocab {len(tokenizer)}", flush=True)

    class StopAtAccuracy(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            accuracy = (metrics or {}).get("eval_answer_accuracy", 0.0)
            print(f"[demo] {time.monotonic() - start:5.0f}s warm start step {state.global_step}: validation accuracy "
                  f"{accuracy:.2f}", flush=True)
            if accuracy >= config.warm_start_accuracy:
                control.should_training_stop = True

    sft_args = MathSFTConfig(
        output_dir=str(out / "warm-start"), learning_rate=config.sft_learning_rate, lr_scheduler_type="constant",
        per_device_train_batch_size=config.sft_batch_size, max_steps=config.sft_max_steps, eval_strategy="steps",
        eval_steps=config.sft_eval_steps, eval_max_tokens=config.max_completion_length, eval_min_tokens=1,
        per_device_eval_batch_size=config.validation_problems, num_logged_generations=0, save_strategy="no",
        logging_steps=config.sft_eval_steps, seed=config.seed, use_cpu=True, bf16=False, report_to="none",
        disable_tqdm=True,
    )
    sft = MathSFTTrainer(model, sft_args, train_dataset=Dataset.from_list(train), eval_dataset=validation,
                         processing_class=tokenizer, callbacks=[StopAtAccuracy()])
    sft.train()
    sft.save_model(str(out / "warm-start"))
    warm_start_steps = sft.state.global_step

    before = held_out_accuracy(model, tokenizer, test, config.test_samples, config.max_completion_length,
                               config.seed, out / "test-before")
    print(f"[demo] {time.monotonic() - start:5.0f}s held-out accuracy after the warm start ({warm_start_steps} SFT "
          f"steps): {before:.3f}; GRPO for {config.grpo_seconds:.0f} s", flush=True)

    rollouts = config.prompts_per_step * config.group_size
    grpo_args = MathGRPOConfig(
        output_dir=str(out / "grpo"), learning_rate=config.grpo_learning_rate, rollout_batch_size=rollouts,
        group_size=config.group_size, train_batch_size=rollouts, gradient_accumulation_steps=1,
        max_completion_length=config.max_completion_length, max_steps=100_000, max_train_hours=config.grpo_seconds / 3600,
        eval_strategy="steps", eval_steps=config.grpo_eval_steps, eval_on_start=True,
        per_device_eval_batch_size=config.validation_problems, save_strategy="no", seed=config.seed,
        use_cpu=True, bf16=False, report_to="none", log_completions=False, num_completions_to_print=0,
        logging_steps=config.grpo_eval_steps, disable_tqdm=True,
    )
    grpo = MathGRPOTrainer(model, make_trl_reward_funcs(prompt="r1_zero"), grpo_args,
                           train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "ground_truth")} for r in train]),
                           eval_dataset=validation, processing_class=tokenizer)
    grpo.train()
    grpo.evaluate()
    grpo.save_model(str(out / "grpo"))
    after = held_out_accuracy(model, tokenizer, test, config.test_samples, config.max_completion_length,
                              config.seed + 1, out / "test-after")

    plot = plot_runs([out / "grpo"], out / "validation_reward.png", metric="eval_answer_accuracy", labels=[f"GRPO seed {config.seed}"])
    summary = {
        "config": asdict(config),
        "warm_start_sft_steps": warm_start_steps,
        "grpo_steps": grpo.state.global_step,
        "held_out_accuracy_before_grpo": before,
        "held_out_accuracy_after_grpo": after,
        "gain_points": round(100 * (after - before), 1),
        "wall_seconds": round(time.monotonic() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "plot": str(plot),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[demo] held-out answer accuracy ({config.test_problems} problems x {config.test_samples} samples, T=1.0): "
          f"before GRPO {before:.3f}, after {grpo.state.global_step} GRPO steps {after:.3f} "
          f"({summary['gain_points']:+.1f} points); {summary['wall_seconds']:.0f} s in all; plot: {plot}", flush=True)
    grpo.accelerator.wait_for_everyone()
    grpo.accelerator.end_training()
    return summary


def demo_parser() -> argparse.ArgumentParser:
    """The demo's command line: one option per DemoConfig field."""
    parser = argparse.ArgumentParser(description="trl-math's CPU learning demo (SFT warm start, then GRPO).")
    for f in DemoConfig.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default, help=f.metadata.get("help"))
    return parser


def main(argv: list[str] | None = None) -> dict:
    return run_demo(DemoConfig(**vars(demo_parser().parse_args(argv))))

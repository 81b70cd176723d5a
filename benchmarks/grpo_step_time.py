"""Seconds per GRPO step: MathGRPOTrainer against stock TRL GRPOTrainer (loss_type "grpo"), one run.

Same tiny model (the CPU demo's size), same prompts, same reward functions and batch (8 prompts x 8
completions, one optimizer step per rollout batch), and every completion forced to the same length
(min = max new tokens, no stop string), so the two trainers do the same generation work and differ only
in what trl-math overrides. Rounds alternate between the two trainers (ABAB...) so that machine noise
hits both alike; the figure is the ratio of median step times. MathGRPOTrainer runs twice: with its default
length-aware batching, which does not forward rows whose gradient is exactly zero (with this untrained model every
answer reward is 0, so every row), and with `length_aware_batching=False`, which does the same training work as
stock TRL and so measures what the overrides cost. Writes benchmarks/results/grpo_step_time.json.

    OMP_NUM_THREADS=2 python benchmarks/grpo_step_time.py [--rounds 6 --steps 10 --completion-length 24]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "grpo_step_time.json"


def build(kind: str, model_dir: Path, out: Path, steps: int, length: int, seed: int):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trl_math.grading import make_trl_reward_funcs
    from trl_math.grpo_config import MathGRPOConfig
    from trl_math.grpo_trainer import MathGRPOTrainer
    from trl_math.synthetic import make_arithmetic_splits

    rows = make_arithmetic_splits(seed, {"train": 512})["train"]
    data = Dataset.from_list([{"prompt": f"User: {r['problem']}\nAssistant: <think>", "ground_truth": r["answer"]} for r in rows])
    common = dict(output_dir=str(out), max_steps=steps, learning_rate=1e-4, max_completion_length=length, bf16=False,
                  use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=seed, disable_tqdm=True,
                  log_completions=False, temperature=1.0, top_p=1.0, reward_weights=[1.0, 0.0])
    if kind.startswith("trl_math"):
        args = MathGRPOConfig(rollout_batch_size=64, group_size=8, train_batch_size=64, gradient_accumulation_steps=1,
                              stop_string=None, min_new_tokens=length, length_aware_batching=kind == "trl_math",
                              **common)
        cls = MathGRPOTrainer
    else:
        args = GRPOConfig(loss_type="grpo", beta=0.0, num_generations=8, per_device_train_batch_size=64,
                          gradient_accumulation_steps=1, generation_kwargs={"min_new_tokens": length}, **common)
        cls = GRPOTrainer

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.ends:
                self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    timer = StepTimes()
    trainer = cls(model=str(model_dir), reward_funcs=make_trl_reward_funcs("r1_zero"), args=args, train_dataset=data,
                  callbacks=[timer])
    return trainer, timer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per trainer (alternating)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per round (the first is not timed)")
    parser.add_argument("--completion-length", type=int, default=24)
    args = parser.parse_args()

    import torch

    from trl_math.tiny_models import build_tiny_qwen2, train_bpe_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = train_bpe_tokenizer(vocab_size=400)
        build_tiny_qwen2(tokenizer, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, seed=0).save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        kinds = ("trl_math", "trl_math_batching_off", "stock_trl")
        times, lengths, skipped = ({k: [] for k in kinds}, {k: set() for k in kinds}, {k: [] for k in kinds})
        for round_index in range(args.rounds):
            for kind in kinds:
                trainer, timer = build(kind, tmp / "model", tmp / f"{kind}-{round_index}", args.steps,
                                       args.completion_length, seed=round_index)
                trainer.train()
                steps = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
                times[kind].extend(steps[1:])  # the first step of a round warms caches
                lengths[kind].update(h["completions/mean_length"] for h in trainer.state.log_history
                                     if "completions/mean_length" in h)
                skipped[kind].extend(h["skipped_rows"] for h in trainer.state.log_history if "skipped_rows" in h)
                print(f"round {round_index} {kind:<21} median step {statistics.median(steps[1:]):.3f} s", flush=True)
                del trainer
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["trl_math"] / medians["stock_trl"]
    ratio_off = medians["trl_math_batching_off"] / medians["stock_trl"]
    result = {
        "completion_length": args.completion_length, "rollouts_per_step": 64, "rounds": args.rounds,
        "timed_steps_per_trainer": len(times["trl_math"]), "torch_threads": torch.get_num_threads(),
        "median_step_s": {k: round(v, 4) for k, v in medians.items()},
        "mean_step_s": {k: round(statistics.mean(v), 4) for k, v in times.items()},
        "completion_lengths_seen": {k: sorted(v) for k, v in lengths.items()},
        "mean_skipped_rows_per_step": {k: round(statistics.mean(v), 2) for k, v in skipped.items() if v},
        "ratio_trl_math_over_stock": round(ratio, 3),
        "ratio_trl_math_batching_off_over_stock": round(ratio_off, 3),
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"MathGRPOTrainer / GRPOTrainer median step time: {ratio:.3f} ({medians['trl_math']:.3f} s vs "
          f"{medians['stock_trl']:.3f} s); with length_aware_batching off {ratio_off:.3f} "
          f"({medians['trl_math_batching_off']:.3f} s); wrote {RESULTS.name}")


if __name__ == "__main__":
    main()

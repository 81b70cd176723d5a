"""Peak memory of get_response_log_probs (with entropy) against a naive log_softmax version.

Vocabulary 151,936 (Qwen2.5's), a tiny hidden size, CPU. Each variant runs in a fresh subprocess and
reports its peak resident memory above the baseline taken after the model and inputs exist, so the
figure is what the log-prob computation itself adds (logits included). Writes
benchmarks/results/logprobs_memory.json.

    python benchmarks/logprobs_memory.py [--batch 2] [--seq 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VOCAB = 151_936
RESULTS = Path(__file__).resolve().parent / "results" / "logprobs_memory.json"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def naive_log_probs(model, input_ids, labels):
    logits = model(input_ids).logits
    log_softmax = logits.log_softmax(dim=-1)
    log_probs = log_softmax.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_softmax.exp() * log_softmax).sum(dim=-1)
    return {"log_probs": log_probs, "token_entropy": entropy}


def run_variant(variant: str, mode: str, batch: int, seq: int) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trl_math import get_response_log_probs

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seq + 1)
    model = Qwen2ForCausalLM(config)
    input_ids = torch.randint(0, VOCAB, (batch, seq))
    labels = torch.randint(0, VOCAB, (batch, seq))
    fn = naive_log_probs if variant == "naive" else lambda m, i, l: get_response_log_probs(m, i, l, return_token_entropy=True)
    baseline = current_rss_mib()
    start = time.perf_counter()
    if mode == "no_grad":
        with torch.no_grad():
            out = fn(model, input_ids, labels)
    else:
        out = fn(model, input_ids, labels)
        out["log_probs"].sum().backward()
    elapsed = time.perf_counter() - start
    return {"variant": variant, "mode": mode, "peak_above_baseline_mib": round(peak_rss_mib() - baseline, 1),
            "seconds": round(elapsed, 2), "mean_entropy": float(out["token_entropy"].float().mean())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(*args.child, args.batch, args.seq)))
        return

    logits_mib = args.batch * args.seq * VOCAB * 4 / 2**20
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = []
    for mode in ("no_grad", "forward_backward"):
        for variant in ("naive", "trl_math"):
            cmd = [sys.executable, __file__, "--batch", str(args.batch), "--seq", str(args.seq), "--child", variant, mode]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"vocab {VOCAB}, batch {args.batch}, seq {args.seq}: one float32 logits tensor = {logits_mib:.0f} MiB")
    print(f"{'mode':<17}{'variant':<10}{'peak MiB':>10}{'x logits':>10}{'seconds':>9}{'entropy':>10}")
    for r in rows:
        print(f"{r['mode']:<17}{r['variant']:<10}{r['peak_above_baseline_mib']:>10.0f}"
              f"{r['peak_above_baseline_mib'] / logits_mib:>10.2f}{r['seconds']:>9.2f}{r['mean_entropy']:>10.4f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"vocab": VOCAB, "batch": args.batch, "seq": args.seq,
                                   "logits_mib": round(logits_mib, 1), "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()

"""The CPU learning demo for several seeds: held-out answer accuracy before and after GRPO, and wall time.

Each seed runs the recipe as a user would (`python recipes/grpo.py --demo --seed N`; seed 0 with no
arguments at all is the same run) in a fresh process, timed from launch to exit. Writes
benchmarks/results/demo_learning.json.

    OMP_NUM_THREADS=2 python benchmarks/demo_learning.py [--seeds 0 1 2] [--output-root runs/demo-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "demo_learning.json"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-root", default="runs/demo-bench")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        out = Path(args.output_root) / f"seed{seed}"
        start = time.monotonic()
        subprocess.run([sys.executable, str(ROOT / "recipes" / "grpo.py"), "--demo", "--seed", str(seed),
                        "--output_dir", str(out)], check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
        wall = time.monotonic() - start
        summary = json.loads((out / "demo_summary.json").read_text())
        rows.append({"seed": seed, "before": summary["held_out_accuracy_before_grpo"],
                     "after": summary["held_out_accuracy_after_grpo"], "gain_points": summary["gain_points"],
                     "warm_start_sft_steps": summary["warm_start_sft_steps"], "grpo_steps": summary["grpo_steps"],
                     "wall_seconds_launch_to_exit": round(wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"{'seed':>4} {'before':>7} {'after':>7} {'gain':>6} {'SFT steps':>9} {'GRPO steps':>10} {'wall s':>7}")
    for r in rows:
        print(f"{r['seed']:>4} {r['before']:>7.3f} {r['after']:>7.3f} {r['gain_points']:>+6.1f} "
              f"{r['warm_start_sft_steps']:>9} {r['grpo_steps']:>10} {r['wall_seconds_launch_to_exit']:>7.0f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"held_out": "200 problems x 4 samples, temperature 1.0", "runs": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

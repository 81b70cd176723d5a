"""Wall-clock share of validation in the off-policy GRPO configuration, on CPU with a tiny model.

    OMP_NUM_THREADS=2 python benchmarks/validation_share.py [--code DIR] [--label NAME]

Runs DIR's recipes/grpo.py (default: this checkout) in the shape of recipes/configs/grpo/off_policy.yaml, scaled
to a tiny model: 4 optimizer steps per rollout batch (rollouts of 32 = 4 prompts x 8, train batches of 16, 2
epochs), 10 rollout batches, 64 validation problems, 32 tokens per completion, and the validation cadence
(eval_steps or eval_rollout_batches, eval_on_start) of DIR's own off_policy.yaml. Any checkout can be measured,
e.g. an older one with `git worktree add /tmp/old <commit>` and `--code /tmp/old`.

Share = validation seconds / wall time of train() (which includes the validations). Validation seconds are the
`eval_runtime` entries of the run's log: Trainer's evaluation loop logs them, and so does trl-math's validation.
Prints the figures and writes benchmarks/results/validation_share_<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CADENCE_FIELDS = ("eval_steps", "eval_rollout_batches", "eval_on_start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", default=str(HERE.parent), help="checkout whose recipe and config are measured")
    parser.add_argument("--label", default="current", help="name of the result file")
    args = parser.parse_args()
    code = Path(args.code).resolve()
    config = yaml.safe_load((code / "recipes" / "configs" / "grpo" / "off_policy.yaml").read_text())
    cadence = {k: config[k] for k in CADENCE_FIELDS if k in config}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(code), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", "import sys; from trl_math.tiny_models import save_tiny_checkpoint; "
                        "save_tiny_checkpoint(sys.argv[1], seed=0)", str(tmp / "model")], env=env, check=True)
        for name, n in (("train", 64), ("validation", 256)):
            (tmp / f"{name}.jsonl").write_text("".join(
                json.dumps({"problem": f"What is {i} + {2 * i}?", "answer": str(3 * i)}) + "\n" for i in range(n)))
        settings = yaml.safe_load((code / "recipes" / "configs" / "grpo" / "tiny_cpu.yaml").read_text())
        settings.pop("eval_steps", None)  # the cadence is off_policy.yaml's
        settings.update(cadence, model_name_or_path=str(tmp / "model"), train_source=str(tmp / "train.jsonl"),
                        eval_source=str(tmp / "validation.jsonl"), output_dir=str(tmp / "run"), eval_limit=64,
                        rollout_batch_size=32, group_size=8, train_batch_size=16, gradient_accumulation_steps=2,
                        epochs_per_rollout_batch=2, loss_type="grpo_clip", max_steps=40, max_completion_length=32,
                        per_device_eval_batch_size=32, learning_rate=1e-5, log_rollouts=False, logging_steps=1)
        (tmp / "run.yaml").write_text(yaml.safe_dump(settings))
        subprocess.run([sys.executable, str(code / "recipes" / "grpo.py"), "--config", str(tmp / "run.yaml")], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        log = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    validations = [entry["eval_runtime"] for entry in log if "eval_runtime" in entry]
    train_seconds = next(entry["train_runtime"] for entry in log if "train_runtime" in entry)
    result = {
        "code": args.label,
        "cadence": cadence,
        "optimizer_steps": 40,
        "rollout_batches": 10,
        "validation_problems": 64,
        "validations": len(validations),
        "validation_seconds": round(sum(validations), 2),
        "seconds_per_validation": round(sum(validations) / len(validations), 2) if validations else None,
        "train_seconds": round(train_seconds, 2),
        "validation_share": round(sum(validations) / train_seconds, 4),
        "torch_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    print(json.dumps(result, indent=2))
    out = HERE / "results" / f"validation_share_{args.label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

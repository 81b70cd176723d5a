"""The `trl-math` command line: `trl-math plot RUN_DIR [RUN_DIR ...]`, `trl-math demo [--seed N ...]`."""

from __future__ import annotations

import argparse
import sys


def cli_parser() -> argparse.ArgumentParser:
    """`trl-math`'s command line; `demo`'s own options are the demo's parser's (trl_math.demo.demo_parser)."""
    parser = argparse.ArgumentParser(prog="trl-math", description="trl-math utilities")
    sub = parser.add_subparsers(dest="command", required=True)
    plot = sub.add_parser("plot", help="draw validation curves of runs (GRPO, SFT, EI) against step and wall-clock time (PNG)")
    plot.add_argument("run_dirs", nargs="+", help="output directories of training runs")
    plot.add_argument("-o", "--output", default="validation_curves.png", help="PNG to write")
    plot.add_argument("--metric", default=None,
                      help="logged key to draw (default: eval_answer_accuracy, the validation accuracy of every trainer)")
    plot.add_argument("--x", default="step", choices=["step", "rollout_batch"],
                      help="x axis of the left panel: optimizer step (an EI run: the optimizer steps of its SFT "
                      "phases), or rollout batch (GRPO: compares on- and off-policy)")
    plot.add_argument("--labels", nargs="+", default=None, help="legend labels, one per run (default: folder names)")
    sub.add_parser("demo", help="the CPU learning demo (SFT warm start, then GRPO); options: trl-math demo --help",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from .demo import main as demo

        demo(rest)
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    if args.command == "plot":
        from .plotting import plot_runs

        if args.labels is not None and len(args.labels) != len(args.run_dirs):
            parser.error(f"--labels got {len(args.labels)} labels for {len(args.run_dirs)} runs")
        try:
            path = plot_runs(args.run_dirs, args.output, metric=args.metric, labels=args.labels, x=args.x)
        except (FileNotFoundError, ValueError) as err:
            print(f"trl-math plot: {err}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

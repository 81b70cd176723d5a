"""Zero-shot evaluation on the supplement's benchmarks (CS336 Assignment 5 supplement, sections 2 and 4):
mmlu_baseline, gsm8k_baseline, alpaca_eval_baseline, sst_baseline and, with --prompt_format alpaca on the
instruction-tuned model, mmlu_sft, gsm8k_sft, alpaca_eval_sft, sst_sft.

    python recipes/zero_shot.py --config recipes/configs/zero_shot/mmlu_baseline.yaml [--limit 100 ...]

Writes <output_dir>/generations.jsonl (one line per example, as it goes), summary.json (accuracy, unparsed
generations, throughput; per subject for MMLU) and, for the judges, alpaca_eval_outputs.json (AlpacaEval)
or sst_outputs.jsonl (SimpleSafetyTests); prints the figures and, with --show_examples N, N random wrong
answers (MMLU, GSM8K) or outputs. Relaunched into an output_dir with a partial generations.jsonl, it samples
only the missing examples (`--resume false` starts over). Prompts, sampling and files:
trl_math.supplement.zero_shot. Arguments: ZeroShotArguments and ZeroShotSamplingConfig; YAML via --config,
command-line flags override it.
"""

from __future__ import annotations

import random

from trl import TrlParser

from trl_math.supplement.zero_shot import ZeroShotArguments, ZeroShotSamplingConfig, run_zero_shot


def report(result, show_examples: int = 0, seed: int = 0) -> str:
    """The summary's figures (and `show_examples` random wrong answers, or outputs) as text."""
    summary = result.summary
    throughput = summary["throughput"]
    rate = throughput["examples_per_second"]
    lines = [f"{summary['benchmark']}: n={summary['n']}  mean response tokens {summary['mean_response_tokens']:.1f}  "
             f"finish reasons {summary['finish_reasons']}",
             f"throughput: {throughput['examples']} examples generated in {throughput['generation_seconds']:.1f} s"
             + (f" ({rate:.2f} examples/s)" if rate is not None else "")]
    if "accuracy" in summary:
        lines.append(f"accuracy {summary['accuracy']:.4f} ({summary['correct']}/{summary['n']})  "
                     f"unparsed generations {summary['unparsed']}")
        for subject, counts in summary.get("subjects", {}).items():
            lines.append(f"  {subject:<40} {counts['accuracy']:.3f} ({counts['correct']}/{counts['n']}, "
                         f"{counts['unparsed']} unparsed)")
    if show_examples:
        pool = [r for r in result.records if not r.get("correct", False)]
        for record in random.Random(seed).sample(pool, min(show_examples, len(pool))):
            graded = "" if "prediction" not in record else \
                f" answer {record['answer']!r}, prediction {record['prediction']!r}"
            lines += ["", f"--- example {record['index']} ({record['finish_reason']}, "
                      f"{record['response_tokens']} tokens){graded}", record["response"]]
    judge = summary["judge_file"]
    lines.append(f"\nwrote {result.records_path} and {result.summary_path}"
                 + (f"; for the judge: {result.records_path.parent / judge}" if judge else ""))
    return "\n".join(lines)


def main(args: ZeroShotArguments, sampling: ZeroShotSamplingConfig):
    print(report(run_zero_shot(args, sampling), args.show_examples))


# The recipe's arguments, in the order main() takes them (tests/test_docs.py parses documented commands with them).
ARGUMENTS = (ZeroShotArguments, ZeroShotSamplingConfig)

if __name__ == "__main__":
    main(*TrlParser(ARGUMENTS).parse_args_and_config())

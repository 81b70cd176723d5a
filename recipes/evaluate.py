"""Zero-shot evaluation of a model on math problems: the math_baseline problem (CS336 Assignment 5, section 3).

    python recipes/evaluate.py --config recipes/configs/evaluate/math_baseline.yaml [--eval_limit 100 ...]

Writes <output_dir>/generations.jsonl (one line per problem, as it goes) and <output_dir>/summary.json,
then prints the (format, answer) category table and, with --show_examples N, N examples of each.
Relaunched into an output_dir with a partial generations.jsonl, it grades only the missing problems
(`--resume false` starts over; another model, prompt, sampling or data is refused).
Arguments: EvaluateArguments (data, model, backend, output) and SamplingConfig (sampling); YAML via
--config, command-line flags override it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

from trl import TrlParser

from trl_math.data import PROMPT_NAMES, MathDataArguments
from trl_math.grading.reward_pool import CATEGORIES
from trl_math.sampler_arguments import SamplerArguments
from trl_math.sampling import SamplingConfig

CATEGORY_LABELS = {
    "format1_answer1": "format 1, answer 1 (correct)",
    "format1_answer0": "format 1, answer 0",
    "format0_answer0": "format 0, answer 0",
    "format0_answer1": "format 0, answer 1",
}


@dataclass
class EvaluateArguments(MathDataArguments, SamplerArguments):
    """Problems (eval_source etc., see MathDataArguments), model and generation backend (SamplerArguments),
    reward, outputs."""

    eval_limit: int | None = field(
        default=None, metadata={"help": "Evaluate a seeded random sample of N problems (see limit_strategy). None: all."}
    )
    reward: str | None = field(
        default=None, metadata={"help": "Reward: 'r1_zero' or 'question_only'. None: the prompt's name."}
    )
    output_dir: str = field(default="outputs/math_baseline", metadata={"help": "Where the two result files go."})
    resume: bool = field(
        default=True,
        metadata={"help": "Continue a partial generations.jsonl in output_dir (only the missing problems are sampled). "
                  "False: start over."},
    )
    show_examples: int = field(default=0, metadata={"help": "Print this many examples of each category."})


def run(args: EvaluateArguments, sampling: SamplingConfig):
    """Evaluate as `args` says; returns the EvaluationResult."""
    from trl_math.evaluation import evaluate
    from trl_math.grading.registry import resolve_reward_fn
    from trl_math.data import problem_ids
    from trl_math.validation import write_validation_problems

    reward = args.reward or args.prompt
    if reward not in PROMPT_NAMES:
        raise ValueError(f"reward: {reward!r} is not one of {PROMPT_NAMES} (set --reward with a custom prompt file)")
    for name in ("eval_source", "model_name_or_path"):
        if getattr(args, name) is None:
            raise ValueError(f"{name}: required")
    backend = args.resolved_backend()
    problems = args.load_problems("eval", output_dir=args.output_dir)
    write_validation_problems(problems, args.output_dir)
    run_description = {
        "model": args.model_name_or_path,
        "source": args.eval_source,
        "prompt": args.prompt,
        "reward": reward,
        "backend": backend,
        "sampling": asdict(sampling),
    }
    sampler = args.load_sampler(sampling)
    return evaluate(sampler, resolve_reward_fn(reward), problems["prompt"], problems["ground_truth"], args.output_dir,
                    problem_ids=problem_ids(problems), chunk_size=args.chunk_size, extra_summary=run_description,
                    resume=args.resume, fingerprint=run_description)


def report(result, show_examples: int = 0) -> str:
    """The category table (and `show_examples` examples of each category) as text."""
    summary = result.summary
    n = summary["n"]
    lines = [f"{'category':<30} {'count':>7} {'share':>7}"]
    for name in CATEGORIES.values():
        count = summary["categories"][name]
        if count or name != "format0_answer1":
            lines.append(f"{CATEGORY_LABELS[name]:<30} {count:>7} {count / n:>7.1%}")
    lines.append(
        f"n={n}  format accuracy {summary['format_accuracy']:.3f}  answer accuracy {summary['answer_accuracy']:.3f}  "
        f"mean response tokens {summary['mean_response_tokens']:.1f}  finish reasons {summary['finish_reasons']}"
    )
    if show_examples:
        by_category = defaultdict(list)
        for record in result.records:
            by_category[record["category"]].append(record)
        for name in CATEGORIES.values():
            for record in by_category[name][:show_examples]:
                lines += [
                    "",
                    f"--- {CATEGORY_LABELS[name]} (example {record['index']}, {record['finish_reason']}, "
                    f"{record['response_tokens']} tokens) ground truth: {record['ground_truth']!r}",
                    record["response"],
                ]
    lines.append(f"\nwrote {result.records_path} and {result.summary_path}")
    return "\n".join(lines)


def main(args: EvaluateArguments, sampling: SamplingConfig):
    print(report(run(args, sampling), args.show_examples))


# The recipe's arguments, in the order main() takes them (tests/test_docs.py parses documented commands with them).
ARGUMENTS = (EvaluateArguments, SamplingConfig)

if __name__ == "__main__":
    main(*TrlParser(ARGUMENTS).parse_args_and_config())

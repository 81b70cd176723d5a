"""Validation during training, one definition for GRPO, SFT and expert iteration.

Validation is the math_baseline evaluation of the current policy (`evaluation.evaluate`): one response per
validation problem, graded with the course's reward for the prompt (r1_zero_reward_fn or
question_only_reward_fn), whatever reward trains. Every trainer logs it under the same names, so one plot
compares SFT, EI and GRPO curves:

- `eval_answer_accuracy`, `eval_format_accuracy`: means over the problems;
- `eval_format1_answer1`, `eval_format1_answer0`, `eval_format0_answer0`, `eval_format0_answer1`: the
  category counts; `eval_mean_response_tokens`, `eval_finish_stop` / `eval_finish_length`, `eval_n`;
- `eval_runtime`: the validation's wall time in seconds (sampling, grading, writing).

The final full validation logs the same figures prefixed `final_eval_`. Each validation writes its records
and summary under the run's output directory, and the problems validated on are listed once in
`validation_problems.json` (their unique_ids, or their positions in the source file).
"""

from __future__ import annotations

from pathlib import Path

from .data import problem_ids
from .evaluation import EvaluationResult, evaluate
from .files import write_json_atomic
from .sampling import Sampler

VALIDATION_PROBLEMS_FILE = "validation_problems.json"


def validation_dir(output_dir: str | Path, prefix: str, step: int) -> Path:
    """Where a validation writes its files: `final_eval/` for the final full one, else `eval/<prefix>-step<N>/`."""
    if prefix == "final_eval":
        return Path(output_dir) / "final_eval"
    return Path(output_dir) / "eval" / f"{prefix}-step{step:06d}"


def validate(sampler: Sampler, reward_fn, problems, output_dir: str | Path, **options) -> EvaluationResult:
    """`evaluate` on a Dataset of validation problems (columns prompt, ground_truth; problem ids when present).
    `options`: those of `evaluate`."""
    if problems is None or isinstance(problems, dict):
        raise ValueError("validation: pass one Dataset of validation problems (columns prompt, ground_truth)")
    missing = {"prompt", "ground_truth"} - set(problems.column_names)
    if missing:
        raise ValueError(f"the validation problems lack columns {sorted(missing)}")
    return evaluate(sampler, reward_fn, problems["prompt"], problems["ground_truth"], output_dir,
                    problem_ids=problem_ids(problems), **options)


def validation_metrics(result: EvaluationResult, prefix: str = "eval") -> dict[str, float]:
    """The logged figures of a validation (module doc), prefixed `<prefix>_`."""
    summary = result.summary
    metrics = {
        "answer_accuracy": summary["answer_accuracy"],
        "format_accuracy": summary["format_accuracy"],
        "mean_response_tokens": summary["mean_response_tokens"],
        "n": summary["n"],
        **summary["categories"],
        **{f"finish_{reason}": count for reason, count in summary["finish_reasons"].items()},
        "runtime": round(result.seconds, 3),
    }
    return {f"{prefix}_{key}": value for key, value in metrics.items()}


def write_validation_problems(problems, output_dir: str | Path) -> None:
    """List the validation problems of a run in `<output_dir>/validation_problems.json` (main process)."""
    ids = problem_ids(problems)
    record = {"n": len(problems), "problem_ids": ids}
    for name in ("subject", "level"):
        if name in problems.column_names:
            values = problems[name]
            record[f"{name}_counts"] = {value: values.count(value) for value in sorted(set(values))}
    write_json_atomic(Path(output_dir) / VALIDATION_PROBLEMS_FILE, record)

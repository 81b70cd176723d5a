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
and summary under the run's output directory (the summary records the sampling it used), and the problems
validated on are listed once in `validation_problems.json` (their unique_ids, or their positions in the source
file).

Validation samples as the assignment evaluates, whatever the training samples: `ValidationSamplingArguments`
(the trainers' `eval_*` fields) default to `SamplingConfig()`, the assignment's evaluation sampling, seeded
with `eval_seed`. A run whose validation sampling differs says so at start-up (`announce_validation_sampling`).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .data import problem_ids
from .evaluation import EvaluationResult, evaluate
from .files import write_json_atomic
from .sampling import Sampler, SamplingConfig

VALIDATION_PROBLEMS_FILE = "validation_problems.json"
_ASSIGNMENT = SamplingConfig()  # the assignment's evaluation sampling: the one definition of its numbers


@dataclass
class ValidationSamplingArguments:
    """How validation responses are sampled (GRPO, SFT, expert iteration): by default the assignment's evaluation
    sampling (`SamplingConfig()`: temperature 1.0, top-p 1.0, at most 1024 and at least 4 new tokens, stop after
    </answer> and keep it), seeded with `eval_seed`, whatever the training samples with."""

    eval_temperature: float = field(default=_ASSIGNMENT.temperature,
                                    metadata={"help": "Validation sampling temperature (the assignment: 1.0)."})
    eval_top_p: float = field(default=_ASSIGNMENT.top_p, metadata={"help": "Validation nucleus-sampling top_p (1.0)."})
    eval_max_tokens: int = field(default=_ASSIGNMENT.max_tokens,
                                 metadata={"help": "Most tokens sampled per validation response (the assignment: 1024)."})
    eval_min_tokens: int = field(default=_ASSIGNMENT.min_tokens,
                                 metadata={"help": "Fewest tokens sampled per validation response (the assignment: 4)."})
    eval_stop: str | None = field(
        default=_ASSIGNMENT.stop[0],
        metadata={"help": "Validation responses stop after this string, which is kept. None: no stop string."},
    )
    eval_seed: int | None = field(
        default=0, metadata={"help": "Seed of validation sampling (the same draws at every evaluation). None: unseeded."}
    )

    def check_eval_sampling(self) -> None:
        """ValueError naming the field, for eval_* values no sampler accepts."""
        try:
            self.eval_sampling()
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: eval_temperature, eval_top_p, eval_max_tokens, eval_min_tokens: "
                             f"{error}") from None

    def eval_sampling(self) -> SamplingConfig:
        """The validation sampling (vLLM SamplingParams' field names)."""
        return SamplingConfig(
            temperature=self.eval_temperature,
            top_p=self.eval_top_p,
            max_tokens=self.eval_max_tokens,
            min_tokens=self.eval_min_tokens,
            stop=[self.eval_stop] if self.eval_stop else [],
            include_stop_str_in_output=True,
            seed=self.eval_seed,
        )


def sampling_changes(sampling: SamplingConfig) -> list[str]:
    """'field value (the assignment: value)' for each way `sampling` differs from the assignment's evaluation
    sampling (the seed aside)."""
    return [f"{f.name} {getattr(sampling, f.name)!r} (the assignment: {getattr(_ASSIGNMENT, f.name)!r})"
            for f in dataclasses.fields(SamplingConfig)
            if f.name != "seed" and getattr(sampling, f.name) != getattr(_ASSIGNMENT, f.name)]


def announce_validation_sampling(sampling: SamplingConfig) -> None:
    """Say at start-up that validation samples otherwise than the assignment evaluates (nothing when it does not)."""
    changes = sampling_changes(sampling)
    if changes:
        print(f"validation: sampling set explicitly, not the assignment's evaluation sampling: {'; '.join(changes)}",
              file=sys.stderr, flush=True)


def validation_dir(output_dir: str | Path, prefix: str, step: int) -> Path:
    """Where a validation writes its files: `final_eval/` for the final full one, else `eval/<prefix>-step<N>/`."""
    if prefix == "final_eval":
        return Path(output_dir) / "final_eval"
    return Path(output_dir) / "eval" / f"{prefix}-step{step:06d}"


def validate(sampler: Sampler, sampling: SamplingConfig, reward_fn, problems, output_dir: str | Path,
             extra_summary: dict | None = None, fingerprint: dict | None = None, **options) -> EvaluationResult:
    """`evaluate` on a Dataset of validation problems (columns prompt, ground_truth; problem ids when present),
    sampled by `sampler` with `sampling`, which summary.json records (and a resume's fingerprint includes).
    `options`: those of `evaluate`."""
    if problems is None or isinstance(problems, dict):
        raise ValueError("validation: pass one Dataset of validation problems (columns prompt, ground_truth)")
    missing = {"prompt", "ground_truth"} - set(problems.column_names)
    if missing:
        raise ValueError(f"the validation problems lack columns {sorted(missing)}")
    recorded = {"sampling": dataclasses.asdict(sampling)}
    return evaluate(sampler, reward_fn, problems["prompt"], problems["ground_truth"], output_dir,
                    problem_ids=problem_ids(problems), extra_summary={**(extra_summary or {}), **recorded},
                    fingerprint={**(fingerprint or {}), **recorded}, **options)


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

"""MATH-style problems from a local JSONL file or a Hub dataset, formatted with the assignment's prompts.

Every trainer of trl-math (GRPO, SFT, expert iteration) and the evaluation read their problems through
`load_math_problems`, which returns a `datasets.Dataset` with three columns:

- `prompt`: the problem formatted with a prompt template (r1_zero by default), the text the policy sees;
- `ground_truth`: the reference answer, the string the graders compare against;
- `problem`: the raw problem text.

A malformed row is an error that names the file (or dataset), the line (or row) and the field. With
`skip_malformed=True` such rows are skipped instead, and their count is printed: nothing is dropped silently.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

PROMPT_NAMES: tuple[str, ...] = ("r1_zero", "question_only")
_CONFIGURED_LIMIT = object()  # MathDataArguments.load_problems' default: the configured train_limit / eval_limit


class MalformedRowError(ValueError):
    """A row of a problem file lacks a usable problem or answer."""


@dataclass
class MathDataArguments:
    """Where the problems come from and how to read them (shared by the GRPO, SFT, EI and eval recipes)."""

    train_source: str | None = field(
        default=None,
        metadata={"help": "Training problems: a local JSONL file (the course's {problem, answer, ...}) or a Hub dataset id."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to read when `train_source` is a Hub dataset id."})
    eval_source: str | None = field(
        default=None,
        metadata={"help": "Validation problems: a local JSONL file or a Hub dataset id. None: no validation."},
    )
    eval_split: str = field(default="test", metadata={"help": "Split to read when `eval_source` is a Hub dataset id."})
    eval_limit: int | None = field(
        default=1024,
        metadata={
            "help": "Validation examples used during training (the first N valid rows; the assignment asks for at "
            "least 1024). None: all of them."
        },
    )
    train_limit: int | None = field(default=None, metadata={"help": "Keep only the first N training problems."})
    problem_field: str = field(default="problem", metadata={"help": "Field holding the problem text."})
    answer_field: str | None = field(
        default="answer",
        metadata={"help": "Field holding the reference answer. None: take it from `solution_field`."},
    )
    solution_field: str | None = field(
        default=None,
        metadata={
            "help": "Field holding a worked solution; the answer is its last \\boxed{...} (the course's rule). Used for rows without "
            "`answer_field` (public MATH copies carry only the solution)."
        },
    )
    prompt: str = field(
        default="r1_zero",
        metadata={"help": "Prompt template: 'r1_zero', 'question_only' or a path to a file with a {question} placeholder."},
    )
    skip_malformed: bool = field(
        default=False,
        metadata={"help": "Skip rows without a usable problem or answer (their count is printed) instead of failing."},
    )

    def load_problems(self, which: str, limit: int | None | object = _CONFIGURED_LIMIT):
        """The training ('train') or validation ('eval') problems these arguments describe.

        `limit` overrides train_limit / eval_limit (None: every row); left out, the configured one applies.
        """
        if which not in ("train", "eval"):
            raise ValueError(f"which must be 'train' or 'eval', got {which!r}")
        source = self.train_source if which == "train" else self.eval_source
        if source is None:
            raise ValueError(f"{which}_source: required")
        return load_math_problems(
            source,
            split=self.train_split if which == "train" else self.eval_split,
            problem_field=self.problem_field,
            answer_field=self.answer_field,
            solution_field=self.solution_field,
            prompt=self.prompt,
            skip_malformed=self.skip_malformed,
            limit=(self.train_limit if which == "train" else self.eval_limit) if limit is _CONFIGURED_LIMIT else limit,
        )


def load_prompt_template(prompt: str) -> str:
    """The text of a packaged prompt ('r1_zero', 'question_only') or of a template file; must hold {question}."""
    if prompt in PROMPT_NAMES:
        text = resources.files("trl_math").joinpath("prompts", f"{prompt}.prompt").read_text(encoding="utf-8")
        source = f"the packaged prompt {prompt!r}"
    else:
        path = Path(prompt)
        if not path.is_file():
            raise FileNotFoundError(f"prompt {prompt!r} is neither one of {PROMPT_NAMES} nor an existing template file")
        text = path.read_text(encoding="utf-8")
        source = str(path)
    if "{question}" not in text:
        raise ValueError(f"{source} has no {{question}} placeholder")
    return text


def format_prompt(template: str, question: str) -> str:
    """Put `question` in place of {question}. Not str.format: LaTeX braces in problems stay untouched."""
    return template.replace("{question}", question)


def _row_answer(row: dict[str, Any], answer_field: str | None, solution_field: str | None) -> tuple[str | None, str]:
    """(answer, the field it was read from or should have been) for one row."""
    if answer_field is not None and answer_field in row:
        value = row[answer_field]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or str(value).strip() == "":
            return None, answer_field
        return str(value).strip(), answer_field
    if solution_field is not None:
        solution = row.get(solution_field)
        if not isinstance(solution, str):
            return None, solution_field
        from .grading.extract import extract_boxed_answer  # the course's \boxed{...} rule

        return extract_boxed_answer(solution), solution_field
    return None, answer_field or "answer_field"


def _iter_jsonl(path: Path):
    """(line number, row or parse error message) for each non-blank line of a JSONL file."""
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                yield lineno, f"invalid JSON ({error.msg})"
                continue
            yield lineno, row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"


def _iter_hub(source: str, split: str):
    from datasets import load_dataset

    for index, row in enumerate(load_dataset(source, split=split)):
        yield index, row


def iter_rows(
    source: str | Path, split: str | None = None
) -> tuple[Iterator[tuple[int, dict | str]], Callable[[int], str]]:
    """(rows, where) of `source`: a local JSONL file (a .jsonl/.json name or an existing path) or a Hub dataset id
    read with `split` (None: 'train').

    `rows` yields (line or row number, row), the row being a dict or, for an unreadable JSONL line, the message
    saying why; `where(number)` locates a row for error messages ("file:line" or "dataset (split s) row n").
    """
    path = Path(source)
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return _iter_jsonl(path), (lambda n: f"{path}:{n}")
    split = split or "train"
    return _iter_hub(str(source), split), (lambda n: f"{source} (split {split}) row {n}")


def load_math_problems(
    source: str | Path,
    split: str | None = None,
    problem_field: str = "problem",
    answer_field: str | None = "answer",
    solution_field: str | None = None,
    prompt: str = "r1_zero",
    skip_malformed: bool = False,
    limit: int | None = None,
):
    """Problems of `source` (local JSONL path, or Hub dataset id read with `split`) as a Dataset.

    Columns: prompt (formatted with `prompt`), ground_truth, problem. The answer is `answer_field` when the
    row has it, else the last \\boxed{...} of `solution_field`. `limit` keeps the first N valid rows.
    """
    from datasets import Dataset

    if answer_field is None and solution_field is None:
        raise ValueError("load_math_problems needs `answer_field` or `solution_field` to find the answers")
    template = load_prompt_template(prompt)
    rows, where = iter_rows(source, split)
    columns: dict[str, list[str]] = {"prompt": [], "ground_truth": [], "problem": []}
    skipped: list[str] = []
    for number, row in rows:
        if limit is not None and len(columns["problem"]) >= limit:
            break
        if isinstance(row, str):
            problem_text = f"{where(number)}: {row}"
        else:
            problem = row.get(problem_field)
            answer, answer_from = _row_answer(row, answer_field, solution_field)
            if not isinstance(problem, str) or not problem.strip():
                problem_text = f"{where(number)}: field {problem_field!r} is missing or not a non-empty string"
            elif answer is None:
                what = "has no \\boxed{...} answer" if answer_from == solution_field and answer_from in row else (
                    "is missing or empty"
                )
                problem_text = f"{where(number)}: field {answer_from!r} {what}"
            else:
                columns["prompt"].append(format_prompt(template, problem))
                columns["ground_truth"].append(answer)
                columns["problem"].append(problem)
                continue
        if not skip_malformed:
            raise MalformedRowError(problem_text + " (pass skip_malformed=True to skip such rows)")
        skipped.append(problem_text)
    if skipped:
        print(f"load_math_problems: skipped {len(skipped)} malformed rows of {source}; first: {skipped[0]}", file=sys.stderr)
    if not columns["problem"]:
        raise ValueError(f"{source} holds no usable problems")
    return Dataset.from_dict(columns)

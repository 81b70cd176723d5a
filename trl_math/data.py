"""MATH-style problems from a local JSONL file or a Hub dataset, formatted with the assignment's prompts.

Every trainer of trl-math (GRPO, SFT, expert iteration) and the evaluation read their problems through
`load_math_problems`, which returns a `datasets.Dataset` with the columns

- `prompt`: the problem formatted with a prompt template (r1_zero by default), the text the policy sees;
- `ground_truth`: the reference answer, the string the graders compare against;
- `problem`: the raw problem text;
- `source_index`: the row's position among the source's valid rows;
- `unique_id`, `subject`, `level`: copied when every row has them (the course's MATH files do).

A limit (`eval_limit`, `train_limit`) keeps a seeded random sample of that many problems by default, in
source order: the course's MATH files are sorted by subject, so their head is no sample of the split
(`limit_strategy: head` keeps the first rows, on purpose only). The same seed gives the same problems in
every trainer and in recipes/evaluate.py; the subject / level mix of the sample is printed when the data
carries those fields.

A row with an empty answer (`""`, blank or null: the course's train.jsonl has two, at lines 7037 and 7437) is
one the course's grader cannot score: it is left out, and the count and places of such rows are printed and
recorded in the run's data summary (`data_summary.json` in its output_dir, see `MathDataArguments.load_problems`).
Any other malformed row (a line that is no JSON object, a missing or empty problem, a missing answer field, an
answer that is no string or number) is an error that names the file (or dataset), the line (or row) and the
field. With `skip_malformed=True` such rows are skipped instead, counted, printed and recorded in the summary
too: nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .files import write_json_atomic

PROMPT_NAMES: tuple[str, ...] = ("r1_zero", "question_only")
LIMIT_STRATEGIES: tuple[str, ...] = ("random", "head")
# Row fields copied into the problems when every row carries them (the course's MATH files do).
PASSTHROUGH_FIELDS: tuple[str, ...] = ("unique_id", "subject", "level")
_CONFIGURED_LIMIT = object()  # MathDataArguments.load_problems' default: the configured train_limit / eval_limit
DATA_SUMMARY_FILE = "data_summary.json"
LISTED_PLACES = 20  # places of left-out or skipped rows listed in a data summary (all are counted)


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
            "help": "Validation problems used during training: a seeded random sample of this many (see "
            "limit_strategy; the assignment asks for at least 1024). None: all of them."
        },
    )
    train_limit: int | None = field(
        default=None, metadata={"help": "Train on a seeded random sample of this many problems (see limit_strategy)."}
    )
    limit_strategy: str = field(
        default="random",
        metadata={
            "help": "How eval_limit / train_limit pick problems: 'random' (a sample drawn with limit_seed, kept in "
            "source order) or 'head' (the first rows; the course's MATH files are sorted by subject, so this is "
            "no sample of the split)."
        },
    )
    limit_seed: int = field(
        default=0, metadata={"help": "Seed of the limited samples: the same seed gives the same problems everywhere."}
    )
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
        metadata={"help": "Skip malformed rows (no JSON object, no problem, no answer field; their count is printed and "
                  "recorded) instead of failing. Rows with an empty answer, which the course cannot grade, are always "
                  "left out and counted."},
    )

    def __post_init__(self):
        # On the command line a field can only be given as text: "null" and "none" mean None there, as in YAML.
        for name in ("answer_field", "solution_field"):
            if isinstance(getattr(self, name), str) and getattr(self, name).lower() in ("null", "none", ""):
                setattr(self, name, None)

    def load_problems(self, which: str, limit: int | None | object = _CONFIGURED_LIMIT,
                      output_dir: str | Path | None = None, summary: dict | None = None):
        """The training ('train') or validation ('eval') problems these arguments describe.

        `limit` overrides train_limit / eval_limit (None: every row); left out, the configured one applies.
        `output_dir`: the run's; the read's summary (rows read, left out, skipped, kept) is recorded under `which`
        in its data_summary.json (`record_data_summary`). `summary`: a dict to fill with it instead, for a recipe
        that records it once it knows the run (trl_math.resume).
        """
        if which not in ("train", "eval"):
            raise ValueError(f"which must be 'train' or 'eval', got {which!r}")
        source = self.train_source if which == "train" else self.eval_source
        if source is None:
            raise ValueError(f"{which}_source: required")
        summary = {} if summary is None else summary
        problems = load_math_problems(
            source,
            split=self.train_split if which == "train" else self.eval_split,
            problem_field=self.problem_field,
            answer_field=self.answer_field,
            solution_field=self.solution_field,
            prompt=self.prompt,
            skip_malformed=self.skip_malformed,
            limit=(self.train_limit if which == "train" else self.eval_limit) if limit is _CONFIGURED_LIMIT else limit,
            limit_strategy=self.limit_strategy,
            limit_seed=self.limit_seed,
            summary=summary,
        )
        if output_dir is not None:
            record_data_summary(output_dir, which, summary)
        return problems


def record_data_summary(output_dir: str | Path, key: str, summary: dict) -> None:
    """Put `summary` under `key` in `<output_dir>/data_summary.json` (kept entries of other keys), from the main
    process only (RANK 0 or unset: every process reads the same data)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    path = Path(output_dir) / DATA_SUMMARY_FILE
    summaries = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    write_json_atomic(path, summaries | {key: summary})


def record_data_summaries(output_dir: str | Path, summaries: dict[str, dict]) -> None:
    """`record_data_summary` for each read of `summaries` ({which: summary}; an empty summary: nothing was read)."""
    for key, summary in summaries.items():
        if summary:
            record_data_summary(output_dir, key, summary)


def packaged_prompt(name: str) -> str:
    """The text of `trl_math/prompts/<name>.prompt`, the package's copy of a course prompt, exactly as shipped."""
    return resources.files("trl_math").joinpath("prompts", f"{name}.prompt").read_text(encoding="utf-8")


def load_prompt_template(prompt: str) -> str:
    """The text of a packaged prompt ('r1_zero', 'question_only') or of a template file; must hold {question}."""
    if prompt in PROMPT_NAMES:
        text = packaged_prompt(prompt)
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
    """(answer, "") for one row, the answer "" when it is empty (blank or null); or (None, what makes the row
    malformed, naming the field)."""
    if answer_field is not None and answer_field in row:
        value = row[answer_field]
        if value is None or (isinstance(value, str) and not value.strip()):
            return "", ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return None, f"field {answer_field!r} is not a string or number"
        return str(value).strip(), ""
    if solution_field is not None:
        solution = row.get(solution_field)
        if not isinstance(solution, str):
            return None, f"field {solution_field!r} is missing or not a string"
        from .grading.extract import extract_boxed_answer  # the course's \boxed{...} rule

        answer = extract_boxed_answer(solution)
        return (answer, "") if answer is not None else (None, f"field {solution_field!r} has no \\boxed{{...}} answer")
    return None, f"field {answer_field or 'answer_field'!r} is missing"


def _iter_jsonl(path: Path):
    """(line number, row or parse error message) for each non-blank line of a JSONL file (gzip-compressed
    when its name ends in .gz, as the course ships its instruction-tuning and HH data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
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
    """(rows, where) of `source`: a local JSONL file (a .jsonl/.json name, gzip-compressed with .gz, or an existing
    path) or a Hub dataset id read with `split` (None: 'train').

    `rows` yields (line or row number, row), the row being a dict or, for an unreadable JSONL line, the message
    saying why; `where(number)` locates a row for error messages ("file:line" or "dataset (split s) row n").
    """
    path = Path(source)
    if path.suffix in (".jsonl", ".json") or path.name.endswith((".jsonl.gz", ".json.gz")) or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return _iter_jsonl(path), (lambda n: f"{path}:{n}")
    split = split or "train"
    return _iter_hub(str(source), split), (lambda n: f"{source} (split {split}) row {n}")


def select_limited(n: int, limit: int | None, strategy: str = "random", seed: int = 0) -> list[int]:
    """Indices of the rows a `limit` keeps out of `n`: all of them, the first `limit`, or a seeded random
    sample of `limit` in increasing order."""
    if strategy not in LIMIT_STRATEGIES:
        raise ValueError(f"limit_strategy: {strategy!r} is not one of {LIMIT_STRATEGIES}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    if limit is None or limit >= n:
        return list(range(n))
    if strategy == "head":
        return list(range(limit))
    return sorted(random.Random(seed).sample(range(n), limit))


def describe_mix(columns: dict[str, list], kept: list[int]) -> str:
    """The subject and level shares of the kept rows against all rows (empty when the data has neither)."""
    parts = []
    for name in ("subject", "level"):
        if name not in columns:
            continue
        everything, sample = Counter(columns[name]), Counter(columns[name][i] for i in kept)
        shares = ", ".join(f"{value} {100 * sample[value] / len(kept):.1f}% ({100 * count / len(columns[name]):.1f}%)"
                           for value, count in sorted(everything.items()))
        parts.append(f"{name}: {shares}")
    return "; ".join(parts)


def row_strings(row: dict | str, fields: tuple[str, ...], place: str) -> tuple[str, ...]:
    """The values of `fields` in a row of `iter_rows`, each a string; otherwise a ValueError naming `place` (the
    file and line, or dataset and row) and the field."""
    if isinstance(row, str):
        raise ValueError(f"{place}: {row}")
    for name in fields:
        if not isinstance(row.get(name), str):
            raise ValueError(f"{place}: field {name!r} is missing or not a string")
    return tuple(row[name] for name in fields)


def load_math_problems(
    source: str | Path,
    split: str | None = None,
    problem_field: str = "problem",
    answer_field: str | None = "answer",
    solution_field: str | None = None,
    prompt: str = "r1_zero",
    skip_malformed: bool = False,
    limit: int | None = None,
    limit_strategy: str = "random",
    limit_seed: int = 0,
    summary: dict | None = None,
):
    """Problems of `source` (local JSONL path, or Hub dataset id read with `split`) as a Dataset (module doc).

    The answer is `answer_field` when the row has it, else the last \\boxed{...} of `solution_field`. `limit`
    keeps N of the valid rows: a random sample drawn with `limit_seed`, or the first N (`limit_strategy`).
    `summary`, when given, is filled with the read's counts: source, rows, left out for an empty answer and
    skipped as malformed (each a count and the first LISTED_PLACES places), problems (the valid rows), used
    (those the limit keeps).
    """
    from datasets import Dataset

    if answer_field is None and solution_field is None:
        raise ValueError("load_math_problems needs `answer_field` or `solution_field` to find the answers")
    template = load_prompt_template(prompt)
    rows, where = iter_rows(source, split)
    columns: dict[str, list] = {"prompt": [], "ground_truth": [], "problem": []}
    extra: dict[str, list] = {name: [] for name in PASSTHROUGH_FIELDS}
    skipped: list[str] = []
    empty: list[str] = []  # places of the rows with an empty answer, which the course cannot grade
    read = 0
    for number, row in rows:
        read += 1
        if isinstance(row, str):
            problem_text = f"{where(number)}: {row}"
        else:
            problem = row.get(problem_field)
            answer, malformed = _row_answer(row, answer_field, solution_field)
            if not isinstance(problem, str) or not problem.strip():
                problem_text = f"{where(number)}: field {problem_field!r} is missing or not a non-empty string"
            elif answer is None:
                problem_text = f"{where(number)}: {malformed}"
            elif answer == "":
                empty.append(where(number))
                continue
            else:
                columns["prompt"].append(format_prompt(template, problem))
                columns["ground_truth"].append(answer)
                columns["problem"].append(problem)
                for name, values in extra.items():
                    values.append(row.get(name))
                continue
        if not skip_malformed:
            raise MalformedRowError(problem_text + " (pass skip_malformed=True to skip such rows)")
        skipped.append(problem_text)
    if empty:
        print(f"load_math_problems: left out {len(empty)} rows of {source} whose {answer_field!r} is empty (the "
              f"course's grader cannot score them): {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}",
              file=sys.stderr)
    if skipped:
        print(f"load_math_problems: skipped {len(skipped)} malformed rows of {source}; first: {skipped[0]}", file=sys.stderr)
    if not columns["problem"]:
        raise ValueError(f"{source} holds no usable problems")
    n = len(columns["problem"])
    columns |= {name: [str(v) for v in values] for name, values in extra.items()
                if all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values)}
    columns["source_index"] = list(range(n))
    kept = select_limited(n, limit, limit_strategy, limit_seed)
    if len(kept) < n:
        how = f"random sample, seed {limit_seed}" if limit_strategy == "random" else "the first rows"
        mix = describe_mix(columns, kept)
        print(f"load_math_problems: {len(kept)} of {n} problems of {source} ({how})"
              + (f"; sample (all): {mix}" if mix else ""), file=sys.stderr)
    if summary is not None:
        summary.update({
            "source": str(source), "rows": read,
            "empty_answer": {"count": len(empty), "at": empty[:LISTED_PLACES]},
            "malformed_skipped": {"count": len(skipped), "at": skipped[:LISTED_PLACES]},
            "problems": n, "used": len(kept),
        })
    return Dataset.from_dict({name: [values[i] for i in kept] for name, values in columns.items()})


def problem_ids(problems) -> list | None:
    """What identifies each problem in written files: its unique_id when the data has one, else its
    source_index (None when the dataset has neither, e.g. built by hand)."""
    for name in ("unique_id", "source_index"):
        if name in problems.column_names:
            return list(problems[name])
    return None

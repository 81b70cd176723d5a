"""The supplement's four zero-shot benchmarks read into examples (plain dicts), in the course's file formats.

- MMLU (`load_mmlu`): a folder `<folder>/<split>/<subject>_<split>.csv` (the course's data/mmlu, splits dev,
  val, test), CSV rows without header: question, four options, answer letter. Example: {subject (the file's
  subject name, e.g. "high_school_geography"), question, options (4 strings), answer ("A".."D")}; subjects
  in alphabetical order, rows in file order.
- GSM8K (`load_gsm8k`): JSONL of {problem, answer} (the course's data/gsm8k, answer a number) or the original
  {question, answer: "... #### 72"}. Example: {question, answer (the number, commas removed)}.
- AlpacaEval (`load_alpaca_eval`): JSONL of {instruction, dataset, ...}. Example: {instruction, dataset}.
- SimpleSafetyTests (`load_sst`): CSV with header id, harm_area, counter, category, prompts_final.
  Example: {id, harm_area, category, prompts_final}.

A malformed row is an error naming the file, the row and the field. `load_benchmark` reads any of them and
applies a seeded random limit (`data.select_limited`), keeping the file order.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

from ..data import iter_rows, row_strings, select_limited
from .parsers import MMLU_LETTERS

BENCHMARKS: tuple[str, ...] = ("mmlu", "gsm8k", "alpaca_eval", "sst")
MMLU_SPLITS: tuple[str, ...] = ("dev", "val", "test")
# The course repository's data/ layout (the default of each benchmark's data_path).
DEFAULT_DATA_PATHS = {
    "mmlu": "data/mmlu",
    "gsm8k": "data/gsm8k/test.jsonl",
    "alpaca_eval": "data/alpaca_eval/alpaca_eval.jsonl",
    "sst": "data/simple_safety_tests/simple_safety_tests.csv",
}
SST_FIELDS: tuple[str, ...] = ("id", "harm_area", "category", "prompts_final")


def _csv_rows(path: Path, header: bool) -> Iterator[tuple[str, list[str] | dict]]:
    """(place, row) of each CSV record of `path` (a list of fields, or a dict with a header); place names
    the file, the record and its last line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle) if header else csv.reader(handle)
        for number, row in enumerate(reader, start=1):
            yield f"{path}: row {number} (line {reader.line_num})", row


def load_mmlu(folder: str | Path, split: str = "test") -> list[dict]:
    """The MMLU examples of `split` (module doc) under `folder`: the course's data/mmlu, or the split's folder."""
    if split not in MMLU_SPLITS:
        raise ValueError(f"split: {split!r} is not one of {MMLU_SPLITS}")
    folder = Path(folder)
    directory = folder / split if (folder / split).is_dir() else folder
    files = sorted(directory.glob(f"*_{split}.csv"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *_{split}.csv files "
                                f"(MMLU's layout: <folder>/{split}/<subject>_{split}.csv)")
    examples = []
    for path in files:
        subject = path.name.removesuffix(f"_{split}.csv")
        for place, row in _csv_rows(path, header=False):
            if len(row) != 6:
                raise ValueError(f"{place}: expected 6 fields (question, 4 options, answer), got {len(row)}")
            if row[5].strip() not in MMLU_LETTERS:
                raise ValueError(f"{place}: field 6 (answer) is {row[5]!r}, not one of {', '.join(MMLU_LETTERS)}")
            examples.append({"subject": subject, "question": row[0], "options": row[1:5], "answer": row[5].strip()})
    return examples


def gsm8k_gold_answer(answer: str) -> str | None:
    """The number a GSM8K answer field gives: the text after its last '####' when it has one (the original
    files), commas removed; None when that is no number."""
    text = answer.rsplit("####", 1)[-1].strip().replace(",", "")
    try:
        return text if Decimal(text).is_finite() else None
    except InvalidOperation:
        return None


def load_gsm8k(source: str | Path) -> list[dict]:
    """The GSM8K examples of a JSONL file (module doc); the question field is `problem`, else `question`."""
    rows, where = iter_rows(source)
    examples = []
    for number, row in rows:
        original = isinstance(row, dict) and "problem" not in row and "question" in row
        question_field = "question" if original else "problem"
        question, answer = row_strings(row, (question_field, "answer"), where(number))
        gold = gsm8k_gold_answer(answer)
        if gold is None:
            raise ValueError(f"{where(number)}: field 'answer' gives no number: {answer[-80:]!r}")
        examples.append({"question": question, "answer": gold})
    return examples


def load_alpaca_eval(source: str | Path) -> list[dict]:
    """The AlpacaEval instructions of a JSONL file: {instruction, dataset}."""
    rows, where = iter_rows(source)
    return [dict(zip(("instruction", "dataset"), row_strings(row, ("instruction", "dataset"), where(number))))
            for number, row in rows]


def load_sst(path: str | Path) -> list[dict]:
    """The SimpleSafetyTests prompts of the course's CSV: {id, harm_area, category, prompts_final}."""
    examples = []
    for place, row in _csv_rows(Path(path), header=True):
        for name in SST_FIELDS:
            if not isinstance(row.get(name), str) or (name == "prompts_final" and not row[name].strip()):
                raise ValueError(f"{place}: field {name!r} is missing or empty")
        examples.append({name: row[name] for name in SST_FIELDS})
    return examples


def load_benchmark(benchmark: str, data_path: str | Path | None = None, *, split: str = "test",
                   limit: int | None = None, limit_seed: int = 0) -> list[dict]:
    """The examples of `benchmark` (one of BENCHMARKS) from `data_path` (None: the course's layout,
    DEFAULT_DATA_PATHS); `split`: MMLU's. `limit`: a random sample of that many drawn with `limit_seed`, in
    file order (None: all)."""
    loaders = {"mmlu": lambda path: load_mmlu(path, split), "gsm8k": load_gsm8k, "alpaca_eval": load_alpaca_eval,
               "sst": load_sst}
    if benchmark not in loaders:
        raise ValueError(f"benchmark: {benchmark!r} is not one of {BENCHMARKS}")
    examples = loaders[benchmark](data_path if data_path is not None else DEFAULT_DATA_PATHS[benchmark])
    if not examples:
        raise ValueError(f"{data_path}: no {benchmark} examples")
    return [examples[i] for i in select_limited(len(examples), limit, "random", limit_seed)]

"""Rows of the supplement's data: local JSON Lines, plain or gzip-compressed, or a Hub dataset.

The course ships its instruction-tuning data and Anthropic HH as `.jsonl.gz` files; `iter_rows` reads those
itself and hands everything else to `trl_math.data.iter_rows` (plain JSONL, Hub ids). `text_fields` reads
the string fields of a row, failing with the file (or dataset), the line (or row) and the field.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from .. import data


def iter_rows(source, split: str | None = None):
    """(rows, where) of `source`, as `trl_math.data.iter_rows` gives them, `.gz` files included."""
    path = Path(source)
    if not path.name.endswith(".gz"):
        return data.iter_rows(source, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return _gzip_jsonl_rows(path), (lambda number: f"{path}:{number}")


def _gzip_jsonl_rows(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                yield lineno, _parse_object(line)


def _parse_object(line: str) -> dict | str:
    """The JSON object on `line`, or the message saying why there is none."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        return f"invalid JSON ({error.msg})"
    return value if isinstance(value, dict) else f"expected a JSON object, got {type(value).__name__}"


def text_fields(row: dict | str, fields: tuple[str, ...], place: str) -> tuple[str, ...]:
    """The values of `fields` in `row`, each a string; otherwise a ValueError naming `place` and the field."""
    if isinstance(row, str):
        raise ValueError(f"{place}: {row}")
    for name in fields:
        if not isinstance(row.get(name), str):
            raise ValueError(f"{place}: field {name!r} is missing or not a string")
    return tuple(row[name] for name in fields)

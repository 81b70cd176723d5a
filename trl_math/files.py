"""Files a killed run never leaves half-written: JSON written through a rename, JSON lines written whole.

Every result file of trl-math goes through these helpers: evaluation records and summaries, the metrics
log, expert-iteration state, rollouts. A reader sees either the old file or the new one, and a JSONL file
holds only whole lines, except perhaps a torn last line of a writer killed mid-write, which `read_jsonl`
drops (and only that one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path


class JsonlWriter:
    """Writes records as JSON lines, each with a single os.write of the whole line (no torn lines on a kill).

    `append=True` continues an existing file (a resumed evaluation); otherwise the file starts empty.
    """

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = os.O_APPEND if append else os.O_TRUNC
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | mode, 0o644)

    def write(self, record: dict) -> None:
        data = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        while data:
            data = data[os.write(self.fd, data) :]

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _replace_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, obj) -> None:
    """Write `obj` as JSON to `path` through a temporary file and a rename: readers never see half a file."""
    _replace_atomically(Path(path), json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> None:
    """Replace a JSONL file with `records`, atomically (readers see the old file or the new one)."""
    _replace_atomically(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def drop_torn_tail(path: str | Path) -> None:
    """Cut a JSONL file after its last newline, so that appending continues whole lines (a resumed writer)."""
    path = Path(path)
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("r+b") as handle:
            handle.truncate(end)


def filter_jsonl(path: str | Path, keep: Callable[[dict], bool]) -> list[dict]:
    """Keep the records of a JSONL file that `keep` accepts (a resumed writer drops the records of work it redoes),
    and cut a torn tail so that appending continues whole lines; returns the kept records. No file: nothing."""
    path = Path(path)
    if not path.exists():
        return []
    drop_torn_tail(path)
    records = read_jsonl(path)
    kept = [record for record in records if keep(record)]
    if len(kept) != len(records):
        write_jsonl_atomic(path, kept)
    return kept


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file; a torn last line (a writer killed mid-line) is dropped, any other bad line
    is an error naming the file and line."""
    records = []
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    complete = lines[:-1] if lines and lines[-1] else lines  # text after the last newline was never finished
    torn = lines[-1] if lines and lines[-1] else None
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number}: not a JSON line") from None
    if torn is not None:
        try:
            records.append(json.loads(torn))
        except json.JSONDecodeError:
            pass
    return records

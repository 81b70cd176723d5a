"""Anthropic HH preference pairs (problem look_at_hh): single-turn conversations as (instruction, chosen, rejected).

An HH row is {"chosen": conversation, "rejected": conversation}, both conversations written as
"\\n\\nHuman: ...\\n\\nAssistant: ..." and both starting from the same human message. `load_hh` keeps the
rows in which each conversation is a single turn (one human message, one assistant message) and the two
human messages agree (multi-turn conversations can diverge in the human messages too), and splits them
into the instruction (the human message) and the chosen and rejected responses (the assistant messages),
each stripped of surrounding whitespace. Every pair remembers its source, e.g. "helpful-base".

Sources: the course's four training files (`harmless-base.jsonl.gz`, `helpful-base.jsonl.gz`,
`helpful-online.jsonl.gz`, `helpful-rejection-sampled.jsonl.gz`, or a folder that holds them), any other
local HH file, or the Hub dataset id `Anthropic/hh-rlhf`, read subset by subset. Nothing is downloaded
unless a Hub id is given.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..data import iter_rows, row_strings

HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
_HUMAN, _ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


@dataclass
class HHDataArguments:
    """Where the HH pairs come from, and the validation split."""

    hh_sources: list[str] = field(
        default_factory=lambda: ["data/hh"],
        metadata={"help": "HH data: folders holding the course's four .jsonl.gz files, HH files, or the Hub id "
                  "Anthropic/hh-rlhf (its four subsets)."},
    )
    hh_split: str = field(default="train", metadata={"help": "Split to read from a Hub dataset id."})
    validation_size: int = field(
        default=200, metadata={"help": "Pairs held out, at random, for validation (the course: 200)."}
    )

    def load(self, seed: int):
        """(training pairs, validation pairs): `validation_size` pairs drawn with `seed`, the rest for training."""
        pairs = load_hh(self.hh_sources, split=self.hh_split)
        if not 0 < self.validation_size < len(pairs):
            raise ValueError(f"validation_size: {self.validation_size} must lie between 0 and the {len(pairs)} pairs")
        split = pairs.train_test_split(test_size=self.validation_size, seed=seed)
        return split["train"], split["test"]


def sample_pairs(pairs, kind: str, n: int, seed: int):
    """`n` pairs drawn with `seed` from the sources whose name starts with `kind` ("helpful", "harmless")."""
    of_kind = pairs.filter(lambda row: row["source"].startswith(kind))
    if len(of_kind) < n:
        raise ValueError(f"{n} {kind} pairs asked for, {len(of_kind)} available")
    return of_kind.shuffle(seed=seed).select(range(n))


def split_single_turn(conversation: str) -> tuple[str, str] | None:
    """(human message, assistant message) of a single-turn HH conversation; None for any other."""
    if not conversation.startswith(_HUMAN) or conversation.count(_HUMAN) != 1 or conversation.count(_ASSISTANT) != 1:
        return None
    human, _, assistant = conversation[len(_HUMAN) :].partition(_ASSISTANT)
    return human.strip(), assistant.strip()


def _files(source: str) -> list[Path] | None:
    """The local files `source` names (a folder: the four course files in it); None for a Hub dataset id."""
    path = Path(source)
    if path.is_dir():
        files = [path / f"{subset}.jsonl.gz" for subset in HH_SUBSETS]
        missing = [file.name for file in files if not file.is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: the HH folder lacks {', '.join(missing)}")
        return files
    if path.exists() or path.name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return [path]
    return None


def _source_name(path: Path) -> str:
    """'helpful-base' for .../helpful-base.jsonl.gz and for the Hub layout .../helpful-base/train.jsonl.gz."""
    stem = path.name.split(".")[0]
    return path.parent.name if stem in ("train", "test") else stem


def _hub_rows(dataset_id: str, subset: str, split: str):
    from datasets import load_dataset

    rows = load_dataset(dataset_id, data_dir=subset, split=split)
    return enumerate(rows), (lambda number: f"{dataset_id} ({subset}, split {split}) row {number}")


def load_hh(sources, split: str = "train"):
    """The single-turn pairs of `sources` (a path or Hub id, or a list of them) as a Dataset with columns
    instruction, chosen, rejected, source. How many rows each source kept is printed."""
    from datasets import Dataset

    readers = []  # (source name, rows, where)
    for source in [sources] if isinstance(sources, (str, Path)) else sources:
        files = _files(str(source))
        if files is None:
            readers += [(subset, *_hub_rows(str(source), subset, split)) for subset in HH_SUBSETS]
        else:
            readers += [(_source_name(file), *iter_rows(file)) for file in files]
    columns = {"instruction": [], "chosen": [], "rejected": [], "source": []}
    for name, rows, where in readers:
        total, before = 0, len(columns["source"])
        for number, row in rows:
            total += 1
            chosen, rejected = row_strings(row, ("chosen", "rejected"), where(number))
            chosen, rejected = split_single_turn(chosen), split_single_turn(rejected)
            if chosen is None or rejected is None or chosen[0] != rejected[0]:
                continue
            for column, value in zip(columns, (chosen[0], chosen[1], rejected[1], name)):
                columns[column].append(value)
        print(f"load_hh: {name}: {len(columns['source']) - before} of {total} rows are single-turn pairs", file=sys.stderr)
    if not columns["source"]:
        raise ValueError(f"{sources}: no single-turn HH pairs")
    return Dataset.from_dict(columns)

"""load_hh on small gzipped files in the HH format: single-turn pairs kept and split, multi-turn rows dropped;
recipes/look_at_hh.py over them."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from trl_math.supplement.hh import HH_SUBSETS, HHDataArguments, load_hh, sample_pairs, split_single_turn


def conversation(*turns: str) -> str:
    """Alternating human and assistant messages in HH's text format."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {text}" for i, text in enumerate(turns))


def pair(human: str, chosen: str, rejected: str) -> dict:
    return {"chosen": conversation(human, chosen), "rejected": conversation(human, rejected)}


def write_gz(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROWS = {
    "harmless-base": [
        pair("How do I pick a lock?", "I can't help with breaking into places.", "First, get a tension wrench."),
        {"chosen": conversation("Hi", "Hello!", "Can you insult me?", "No."),  # multi-turn: dropped
         "rejected": conversation("Hi", "Hello!", "Can you insult me?", "You fool.")},
    ],
    "helpful-base": [
        pair("What is the capital of France?", "Paris.", "I don't know."),
        pair("Write two lines:\nroses and violets", "Roses are red,\nviolets are blue.", "No."),
        {"chosen": conversation("Tell me a joke.", "Why did the chicken cross the road?"),  # differing human turns
         "rejected": conversation("Tell me a story.", "Once upon a time.")},
    ],
    "helpful-online": [
        {"chosen": conversation("Say hi.", "Hi!"), "rejected": conversation("Say hi.", "Hello", "Again?", "Hi")},
        pair("Name a prime number.", "7 is prime.", ""),  # an empty response is a response
    ],
    "helpful-rejection-sampled": [pair("Spell 'cat'.", "C-A-T.", "K-A-T.")],
}
EXPECTED = [
    ("harmless-base", "How do I pick a lock?", "I can't help with breaking into places.", "First, get a tension wrench."),
    ("helpful-base", "What is the capital of France?", "Paris.", "I don't know."),
    ("helpful-base", "Write two lines:\nroses and violets", "Roses are red,\nviolets are blue.", "No."),
    ("helpful-online", "Name a prime number.", "7 is prime.", ""),
    ("helpful-rejection-sampled", "Spell 'cat'.", "C-A-T.", "K-A-T."),
]


@pytest.fixture
def hh_folder(tmp_path):
    for subset, rows in ROWS.items():
        write_gz(tmp_path / "hh" / f"{subset}.jsonl.gz", rows)
    return tmp_path / "hh"


def as_tuples(dataset):
    return [(r["source"], r["instruction"], r["chosen"], r["rejected"]) for r in dataset]


def test_split_single_turn_reads_the_hh_text_format():
    assert split_single_turn("\n\nHuman: What is 2+2?\n\nAssistant: 4") == ("What is 2+2?", "4")
    assert split_single_turn("\n\nHuman: Hi\n\nAssistant:") == ("Hi", "")
    assert split_single_turn("\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Bye") is None
    assert split_single_turn("\n\nHuman: Hi") is None
    assert split_single_turn("Preamble\n\nHuman: Hi\n\nAssistant: Hello") is None


def test_folder_of_the_four_course_files(hh_folder):
    assert as_tuples(load_hh(hh_folder)) == EXPECTED


def test_files_keep_their_names_including_the_hub_layout(hh_folder, tmp_path):
    hub_layout = write_gz(tmp_path / "hub" / "helpful-base" / "train.jsonl.gz", ROWS["helpful-base"])
    pairs = load_hh([hh_folder / "harmless-base.jsonl.gz", hub_layout])
    assert as_tuples(pairs) == EXPECTED[:3]
    assert load_hh(str(hh_folder / "helpful-rejection-sampled.jsonl.gz"))["source"] == ["helpful-rejection-sampled"]


def test_bad_input_names_file_line_and_field(hh_folder, tmp_path):
    bad = write_gz(tmp_path / "bad.jsonl.gz", [ROWS["helpful-base"][0], {"chosen": "\n\nHuman: a\n\nAssistant: b"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl\.gz:2: field 'rejected' is missing or not a string"):
        load_hh(bad)
    (hh_folder / "helpful-online.jsonl.gz").unlink()
    with pytest.raises(FileNotFoundError, match="lacks helpful-online.jsonl.gz"):
        load_hh(hh_folder)
    with pytest.raises(ValueError, match="no single-turn HH pairs"):
        load_hh(write_gz(tmp_path / "multi.jsonl.gz", [ROWS["harmless-base"][1]]))


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    rows = [pair(f"Question {i}?", f"Good answer {i}.", f"Bad answer {i}.") for i in range(30)]
    for subset in HH_SUBSETS:
        write_gz(tmp_path / "hh" / f"{subset}.jsonl.gz", rows)
    args = HHDataArguments(hh_sources=[str(tmp_path / "hh")], validation_size=20)
    train, validation = args.load(seed=0)
    assert (len(train), len(validation)) == (100, 20)
    keys = lambda d: {(r["source"], r["instruction"]) for r in d}  # noqa: E731
    assert not keys(train) & keys(validation) and len(keys(train) | keys(validation)) == 120
    assert as_tuples(args.load(seed=0)[1]) == as_tuples(validation) != as_tuples(args.load(seed=1)[1])
    with pytest.raises(ValueError, match="validation_size"):
        HHDataArguments(hh_sources=[str(tmp_path / "hh")], validation_size=120).load(seed=0)


def test_sample_pairs_draws_from_one_kind(hh_folder):
    pairs = load_hh(hh_folder)
    helpful = sample_pairs(pairs, "helpful", 3, seed=0)
    assert len(helpful) == 3 and all(source.startswith("helpful-") for source in helpful["source"])
    assert as_tuples(helpful) == as_tuples(sample_pairs(pairs, "helpful", 3, seed=0))
    assert as_tuples(sample_pairs(pairs, "harmless", 1, seed=0)) == EXPECTED[:1]
    with pytest.raises(ValueError, match="2 harmless pairs asked for, 1 available"):
        sample_pairs(pairs, "harmless", 2, seed=0)


def test_look_at_hh_prints_counts_and_pairs(hh_folder):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "look_at_hh.py")
    run = subprocess.run([sys.executable, script, "--hh_sources", str(hh_folder), "--num_examples", "1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    counts = "{'harmless-base': 1, 'helpful-base': 2, 'helpful-online': 1, 'helpful-rejection-sampled': 1}"
    assert f"5 single-turn pairs: {counts}" in run.stdout
    assert "=== harmless 1 (harmless-base) ===" in run.stdout and "How do I pick a lock?" in run.stdout
    assert run.stdout.count("=== helpful 1 (helpful-") == 1

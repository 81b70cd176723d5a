"""trl_math.data: loading MATH-style JSONL, prompt formatting, boxed-answer extraction, malformed rows."""

from __future__ import annotations

import json

import pytest

from trl_math.data import (
    MalformedRowError,
    MathDataArguments,
    format_prompt,
    load_math_problems,
    load_prompt_template,
)


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return path


def test_packaged_templates_match_the_assignment():
    r1 = load_prompt_template("r1_zero")
    assert r1.startswith("A conversation between User and Assistant.")
    assert r1.endswith("User: {question}\nAssistant: <think>")
    assert load_prompt_template("question_only") == "{question}"


def test_format_prompt_keeps_latex_braces():
    template = load_prompt_template("r1_zero")
    question = r"What is $\frac{1}{2} + {x}$?"
    prompt = format_prompt(template, question)
    assert prompt == template[: template.index("{question}")] + question + "\nAssistant: <think>"


def test_load_course_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"problem": "What is 1+1?", "answer": "2", "level": "Level 1"},
            {"problem": r"Simplify $\frac{2}{4}$.", "answer": r"\frac{1}{2}"},
            {"problem": "Integer answer?", "answer": 18},
        ],
    )
    dataset = load_math_problems(path)
    assert dataset.column_names == ["prompt", "ground_truth", "problem", "source_index"]  # "level": not on every row
    assert dataset["ground_truth"] == ["2", r"\frac{1}{2}", "18"] and dataset["source_index"] == [0, 1, 2]
    assert dataset["prompt"][1] == format_prompt(load_prompt_template("r1_zero"), r"Simplify $\frac{2}{4}$.")
    only = load_math_problems(path, prompt="question_only", limit=2, limit_strategy="head")
    assert only["prompt"] == ["What is 1+1?", r"Simplify $\frac{2}{4}$."]


def test_a_limit_keeps_a_seeded_random_sample_in_source_order(tmp_path):
    rows = [{"problem": f"q{i}", "answer": str(i), "unique_id": f"id{i}", "subject": "AB"[i % 2]} for i in range(40)]
    path = write_jsonl(tmp_path / "v.jsonl", rows)
    sample = load_math_problems(path, limit=10, limit_seed=3)
    assert sample.column_names == ["prompt", "ground_truth", "problem", "unique_id", "subject", "source_index"]
    chosen = sample["source_index"]
    assert len(set(chosen)) == 10 and chosen == sorted(chosen) and chosen != list(range(10))
    assert sample["unique_id"] == [f"id{i}" for i in chosen] and sample["ground_truth"] == [str(i) for i in chosen]
    assert load_math_problems(path, limit=10, limit_seed=3)["source_index"] == chosen  # same seed, same problems
    assert load_math_problems(path, limit=10, limit_seed=4)["source_index"] != chosen
    assert load_math_problems(path, limit=10, limit_strategy="head")["source_index"] == list(range(10))
    with pytest.raises(ValueError, match="limit_strategy"):
        load_math_problems(path, limit=10, limit_strategy="first")


def test_the_default_validation_sample_of_the_course_file_represents_every_subject(shared_data_dir, capsys):
    """The course's validation.jsonl is sorted by subject: 1024 rows must be a sample, not its head."""
    from collections import Counter

    source = shared_data_dir / "math" / "validation.jsonl"
    everything = [json.loads(line)["subject"] for line in source.read_text().splitlines()]
    args = MathDataArguments(eval_source=str(source))  # the configs' defaults: eval_limit 1024, random, seed 0
    sample = args.load_problems("eval")
    assert len(sample) == 1024
    shares, full = Counter(sample["subject"]), Counter(everything)
    assert shares.keys() == full.keys() and len(full) == 7
    for subject, count in full.items():
        assert abs(100 * shares[subject] / 1024 - 100 * count / len(everything)) < 3, subject
    assert "subject: Algebra" in capsys.readouterr().err  # the mix is printed
    head = MathDataArguments(eval_source=str(source), limit_strategy="head").load_problems("eval")
    assert set(head["subject"]) == {"Prealgebra", "Precalculus"}  # what the head of the file would have been


def test_answer_from_last_boxed_of_solution_and_custom_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [{"question": "Q1", "solution": r"We get \boxed{3} then \boxed{\sqrt{2}}."}],
    )
    dataset = load_math_problems(path, problem_field="question", answer_field=None, solution_field="solution")
    assert dataset["ground_truth"] == [r"\sqrt{2}"]
    assert dataset["problem"] == ["Q1"]


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({"answer": "2"}, "bad.jsonl:2: field 'problem' is missing"),
        ({"problem": "", "answer": "2"}, "bad.jsonl:2: field 'problem' is missing or not a non-empty string"),
        ({"problem": "Q"}, "bad.jsonl:2: field 'answer' is missing"),
        ({"problem": "Q", "answer": ["2"]}, "bad.jsonl:2: field 'answer' is not a string or number"),
        ("{not json", "bad.jsonl:2: invalid JSON"),
        ("[1, 2]", "bad.jsonl:2: expected a JSON object"),
    ],
)
def test_malformed_row_names_file_line_and_field(tmp_path, bad_row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "ok", "answer": "1"}, bad_row, {"problem": "ok2", "answer": "3"}])
    with pytest.raises(MalformedRowError, match=message.replace(".", r"\.").replace("[", r"\[")):
        load_math_problems(path)


def test_solution_without_box_is_malformed(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "Q", "solution": "no box"}])
    with pytest.raises(MalformedRowError, match=r"m\.jsonl:1: field 'solution' has no \\boxed"):
        load_math_problems(path, answer_field=None, solution_field="solution")


def test_skip_malformed_counts_and_prints(tmp_path, capsys):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [{"problem": "a", "answer": "1"}, {"problem": "b"}, "", "{oops", {"problem": "c", "answer": "3"}],
    )
    summary = {}
    dataset = load_math_problems(path, skip_malformed=True, summary=summary)
    assert dataset["problem"] == ["a", "c"]
    err = capsys.readouterr().err
    assert "skipped 2 malformed rows" in err and "mixed.jsonl:2" in err
    assert summary["malformed_skipped"] == {"count": 2, "at": [f"{path}:2: field 'answer' is missing",
                                                               f"{path}:4: invalid JSON (Expecting property name "
                                                               "enclosed in double quotes)"]}


def test_rows_with_an_empty_answer_are_left_out_counted_and_recorded(tmp_path, capsys):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"problem": "a", "answer": "1"}, {"problem": "b", "answer": ""}, {"problem": "c", "answer": "3"},
        {"problem": "d", "answer": "  "}, {"problem": "e", "answer": None}, {"problem": "f", "answer": 6}])
    args = MathDataArguments(train_source=str(path), eval_source=str(path), eval_limit=2)
    problems = args.load_problems("train", output_dir=tmp_path / "run")
    assert problems["problem"] == ["a", "c", "f"] and problems["source_index"] == [0, 1, 2]
    assert f"left out 3 rows of {path} whose 'answer' is empty" in capsys.readouterr().err
    args.load_problems("eval", output_dir=tmp_path / "run")  # a second entry, beside the first
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert summary["train"] == {
        "source": str(path), "rows": 6, "empty_answer": {"count": 3, "at": [f"{path}:2", f"{path}:4", f"{path}:5"]},
        "malformed_skipped": {"count": 0, "at": []}, "problems": 3, "used": 3}
    assert (summary["eval"]["problems"], summary["eval"]["used"]) == (3, 2)
    with pytest.raises(ValueError, match="no usable problems"):
        load_math_problems(write_jsonl(tmp_path / "empty_answers.jsonl", [{"problem": "b", "answer": ""}]))


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_math_problems(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="no usable problems"):
        load_math_problems(write_jsonl(tmp_path / "empty.jsonl", []))


def test_load_problems_limit_override(tmp_path):
    path = write_jsonl(tmp_path / "v.jsonl", [{"problem": f"q{i}", "answer": str(i)} for i in range(5)])
    args = MathDataArguments(eval_source=str(path), eval_limit=2)
    assert len(args.load_problems("eval")) == 2  # the configured eval_limit
    assert len(args.load_problems("eval", limit=3)) == 3
    assert len(args.load_problems("eval", limit=None)) == 5  # None: every row


def test_unknown_prompt_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither one of"):
        load_prompt_template("r2_zero")
    template = tmp_path / "t.prompt"
    template.write_text("no placeholder")
    with pytest.raises(ValueError, match="no \\{question\\} placeholder"):
        load_prompt_template(str(template))


def test_shared_gsm8k_loads_every_row(shared_data_dir):
    dataset = load_math_problems(shared_data_dir / "gsm8k" / "test.jsonl")
    assert len(dataset) == 1319
    assert dataset["ground_truth"][0] == "18"

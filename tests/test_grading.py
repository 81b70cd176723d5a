"""Answer grading: course compatibility, the accurate mode, ground-truth forms, TRL adapters."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

import trl_math.grading as G
from trl_math.grading import (
    accurate_reward_fn,
    grade_answer,
    make_trl_reward_funcs,
    question_only_answer_reward,
    question_only_reward_fn,
    r1_zero_answer_reward,
    r1_zero_format_reward,
    r1_zero_reward_fn,
)

GRADER_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "grader"
needs_data = pytest.mark.skipif(
    not (GRADER_DATA / "corpus.jsonl").exists(),
    reason="grader corpus not found at ../shared/data/grader (shared data is not checked out)",
)


def r1(answer: str, reasoning: str = "Let me think.") -> str:
    return f"{reasoning} </think> <answer> {answer} </answer>"


def course(answer: str, gt, fast: bool = True) -> float:
    return r1_zero_reward_fn(r1(answer), gt, fast)["answer_reward"]


def accurate(answer: str, gt) -> float:
    return r1_zero_reward_fn(r1(answer), gt, mode="accurate")["answer_reward"]


def _load(name: str) -> list[dict]:
    with open(GRADER_DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------ course compatibility

@needs_data
def test_default_mode_matches_course_labels_on_dev():
    rows = {r["id"]: r for r in _load("corpus.jsonl")}
    labels = _load("dev_labels.jsonl")
    fmt_agree = ans_agree = finished = 0
    bad = []
    for lab in labels:
        r = rows[lab["id"]]
        out = r1_zero_reward_fn(r["response"], r["ground_truth"])
        assert set(out) == {"format_reward", "answer_reward", "reward"}
        assert out["reward"] == out["answer_reward"]
        fmt_agree += out["format_reward"] == lab["format_reward"]
        if lab["status"] != "ok":
            continue
        finished += 1
        if out["answer_reward"] == lab["answer_reward"]:
            ans_agree += 1
        else:
            bad.append(lab["id"])
    assert fmt_agree == len(labels)
    assert finished > 3000
    assert ans_agree / finished >= 0.99, bad[:20]


def test_format_rule_is_the_courses():
    assert r1_zero_reward_fn("x </think> <answer> 5 </answer>", "5")["format_reward"] == 1.0
    for bad in ("x </think><answer> 5 </answer>", "x </think>  <answer> 5 </answer>",
                "x </think> <answer> 5", "<answer> 5 </answer>", ""):
        assert r1_zero_reward_fn(bad, "5") == {"format_reward": 0.0, "answer_reward": 0.0, "reward": 0.0}
    # formatted but wrong: no format bonus in the reward
    assert r1_zero_reward_fn(r1("6"), "5") == {"format_reward": 1.0, "answer_reward": 0.0, "reward": 0.0}


def test_course_answer_span_and_boxed():
    # text after the LAST <answer>, every </answer> removed
    resp = "a </think> <answer> 3 </answer> more <answer> 5 </answer>"
    assert r1_zero_reward_fn(resp, "5")["answer_reward"] == 1.0
    assert r1_zero_reward_fn(resp, "3")["answer_reward"] == 0.0
    # \boxed inside the answer is graded by its content; an unclosed box gives 0
    assert course(r"\boxed{\frac{1}{2}}", r"\frac12") == 1.0
    assert r1_zero_reward_fn(r1(r"\boxed{12"), "12") == {"format_reward": 1.0, "answer_reward": 0.0, "reward": 0.0}


def test_course_verdicts_on_issue_examples():
    # what the course grader rejects although right (we must agree by default) ...
    for answer, gt in [("The answer is 325", "325"), ("0.8.", "0.8"), ("10 dollars", "10"),
                       (r"13 \div 3", r"\frac{13}{3}"), ("−71", "-71"), (r"1\,000", "1000")]:
        assert course(answer, gt) == 0.0, answer
    # ... and the hedge it accepts
    assert course(r"x = 195 \text{ or } x = 196", "195") == 1.0
    # ordinary equivalences it accepts
    for answer, gt in [("1/2", r"\frac{1}{2}"), (r"\dfrac{3}{4}", r"\frac34"), ("0.5", r"\frac12"),
                       (r"2\sqrt{2}", r"\sqrt{8}"), (r"\left(1, 2\right)", "(1,2)"),
                       ("x = 5", "5"), (r"5^\circ", "5"), (r"\$18", "18"), ("18.0", "18")]:
        assert course(answer, gt) == 1.0, answer
    # and things it rejects on purpose (unreduced fraction, wrong value, wrong interval)
    for answer, gt in [("2/4", r"\frac{1}{2}"), ("7", "8"), ("(1, 2]", "(1, 2)")]:
        assert course(answer, gt) == 0.0, answer


# ------------------------------------------------------------------ accurate mode

@pytest.mark.parametrize("answer,gt", [
    ("The answer is 325", "325"), ("0.8.", "0.8"), ("10 dollars", "10"),
    (r"13 \div 3", r"\frac{13}{3}"), ("−71", "-71"), (r"1\,000", "1000"),
    ("$\\frac{9}{4}$", r"\frac94"), ("**305**", "305"), ("`x = -2`", "-2"),
    ("15\u200b", "15"), ("１２", "12"), ("٣", "3"), ("45°", r"45^\circ"),
    ("½", r"\frac{1}{2}"), (r"2\frac{1}{6}", r"\frac{13}{6}"), ("$1,500", "1500"),
    (r"\text{(C)}", r"\text{C}"), ("x**3 + 3*x - 6", "x^3+3x-6"), ("16。", "16"),
    (r"(-\infty, 0) \cup (3, \infty)", r"(-\infty,0)\cup(3,\infty)"),
    (r"\begin{bmatrix} 1/2 \\ 3 \end{bmatrix}", r"\begin{pmatrix} \frac12 \\ 3 \end{pmatrix}"),
])
def test_accurate_accepts_right_answers(answer, gt):
    assert accurate(answer, gt) == 1.0


@pytest.mark.parametrize("answer,gt", [
    (r"x = 195 \text{ or } x = 196", "195"), (r"\pm 10", "10"), (r"\pm\frac{1}{2}", r"\frac12"),
    ("3, 2", "3"), ("0.33", r"\frac13"), ("08", "0.8"), ("41 points", r"40\text{ points}"),
    ("6h^2-4h-24", "6r^2-4r-24"), ("(-2, 8)", "(8,-2)"), ("(1, 2]", "(1,2)"),
    ("7", "8"), ("", "8"), (r"\text{A}", r"\text{(D)}"),
])
def test_accurate_rejects_wrong_answers_and_hedges(answer, gt):
    assert accurate(answer, gt) == 0.0


def test_accurate_ignores_text_after_answer_close():
    resp = "x </think> <answer> 4 </answer>\n\nUser: Thanks! Can you solve another one?"
    assert r1_zero_reward_fn(resp, "4", mode="accurate")["answer_reward"] == 1.0
    assert r1_zero_reward_fn(resp, "4")["answer_reward"] == 0.0  # the course reads the tail too


def test_accurate_pm_allowed_when_truth_has_it():
    assert accurate(r"\pm 3", r"\pm 3") == 1.0


@needs_data
def test_accurate_mode_rates_on_dev_intended_labels():
    rows = {r["id"]: r for r in _load("corpus.jsonl")}
    fn = fp = n_c = n_i = 0
    for lab in _load("dev_intended_labels.jsonl"):
        if lab["intended_answer"] == "ambiguous":
            continue
        r = rows[lab["id"]]
        out = r1_zero_reward_fn(r["response"], r["ground_truth"], mode="accurate")
        assert (out["format_reward"] == 1.0) == lab["intended_format"]
        if lab["intended_answer"] == "correct" and lab["intended_format"]:
            n_c += 1
            fn += out["answer_reward"] != 1.0
        elif lab["intended_answer"] == "incorrect":
            n_i += 1
            fp += out["answer_reward"] == 1.0
    assert fn / n_c <= 0.03
    assert fp / n_i <= 0.01


# ------------------------------------------------------------------ ground-truth forms

def test_ground_truth_types():
    assert course("18", 18) == 1.0
    assert course("0.5", 0.5) == 1.0
    assert course("4", ["3", "4"]) == 1.0 and course("5", ["3", "4"]) == 0.0
    assert course("4", [3, 4.0]) == 1.0
    assert course("42", r"\boxed{42}") == 1.0
    assert course("42", r"The answer is \boxed{42}.") == 1.0
    assert course("42", r"\boxed{42") == 0.0  # no content can be extracted from the truth
    assert course("18", "#### 18") == 1.0
    assert course("5", []) == 0.0 and course("5", None) == 0.0
    assert accurate("42", r"The answer is \boxed{42}.") == 1.0
    assert accurate("4", ["3", 4]) == 1.0
    with pytest.raises(TypeError):
        r1_zero_reward_fn(r1("4"), {"answer": "4"})
    with pytest.raises(ValueError):
        r1_zero_reward_fn(r1("4"), "4", mode="lenient")


def test_question_only():
    assert question_only_reward_fn(r"so \boxed{3} then \boxed{\frac{1}{2}}", "0.5") == {
        "format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}
    assert question_only_reward_fn("the answer is 3", "3") == {
        "format_reward": 0.0, "answer_reward": 0.0, "reward": 0.0}
    assert question_only_reward_fn(r"\boxed{4}", "3")["answer_reward"] == 0.0
    assert question_only_reward_fn(r"\boxed{10 \text{ dollars}}", "10", mode="accurate")["answer_reward"] == 1.0
    assert accurate_reward_fn(r"\boxed{0.8.}", "0.8", prompt="question_only")["answer_reward"] == 1.0
    assert grade_answer("0.8.", "0.8", mode="accurate") and not grade_answer("0.8.", "0.8")


# ------------------------------------------------------------------ TRL adapters

def test_trl_adapters_signature_and_names():
    completions = [r1("5"), r1("6"), "no tags 5", r1("The answer is 5")]
    gts = ["5", "5", "5", "5"]
    extra = dict(prompts=["p"] * 4, completion_ids=[[1]] * 4, trainer_state=None,
                 log_extra=None, log_metric=None, problem=["q"] * 4)
    assert r1_zero_answer_reward(completions, ground_truth=gts, **extra) == [1.0, 0.0, 0.0, 0.0]
    assert r1_zero_format_reward(completions, ground_truth=gts, **extra) == [1.0, 1.0, 0.0, 1.0]
    assert r1_zero_format_reward(completions) == [1.0, 1.0, 0.0, 1.0]
    assert question_only_answer_reward([r"\boxed{5}", "5"], ground_truth=gts[:2], **extra) == [1.0, 0.0]
    answer_fn, format_fn = make_trl_reward_funcs("r1_zero", "accurate")
    assert answer_fn.__name__ == "r1_zero_accurate_answer_reward"
    assert format_fn.__name__ == "r1_zero_format_reward"
    assert answer_fn(completions=completions, ground_truth=gts, **extra) == [1.0, 0.0, 0.0, 1.0]
    names = [f.__name__ for f in make_trl_reward_funcs("question_only", "course")]
    assert names == ["question_only_answer_reward", "question_only_format_reward"]
    # conversational completions: the last message's content
    conv = [[{"role": "assistant", "content": r1("5")}]]
    assert r1_zero_answer_reward(conv, ground_truth=["5"]) == [1.0]
    # picklable (TRL / accelerate may copy reward functions)
    assert pickle.loads(pickle.dumps(answer_fn))(completions[:1], ground_truth=["5"]) == [1.0]
    from trl.trainer.utils import get_callable_name

    assert get_callable_name(answer_fn) == "r1_zero_accurate_answer_reward"
    assert get_callable_name(r1_zero_answer_reward) == "r1_zero_answer_reward"


def test_public_names():
    for name in G.__all__:
        assert hasattr(G, name), name

"""Reward functions: the course's ``r1_zero_reward_fn`` / ``question_only_reward_fn`` and the
accurate mode.

``mode="course"`` (default) reproduces the course grader (validation numbers comparable with
the course's); ``fast=False`` adds its math-verify step (math-verify itself, in a grading worker
process).  ``mode="accurate"`` is the better grader for training rewards and analysis (see
``accurate.py``): same format rule, answer taken
between the last ``<answer>`` and the next ``</answer>``, broader normalisation, hedges
rejected.  Every function returns ``{"format_reward", "answer_reward", "reward"}`` with
``reward == answer_reward`` (a formatted wrong answer earns nothing, as in the course).
"""

from __future__ import annotations

import numbers
from typing import Any

from .course import grade_course
from .extract import (
    answer_span,
    course_answer_span,
    course_extract_answer,
    extract_boxed_answer,
    has_r1_zero_format,
)

__all__ = [
    "MODES",
    "MAX_ANSWER_CHARS",
    "grade_answer",
    "r1_zero_reward_fn",
    "question_only_reward_fn",
    "accurate_reward_fn",
]

MODES = ("course", "accurate")
# Longer extracted answers (after stripping whitespace) are graded wrong without normalising them: no ground
# truth is that long, and it bounds the cost of a call. fast=False's math-verify step, bounded by its worker's
# limits, still sees them, as the course's does.
MAX_ANSWER_CHARS = 4000


def _result(fmt: float, ans: float) -> dict[str, float]:
    return {"format_reward": fmt, "answer_reward": ans, "reward": ans}


def _truths(ground_truth: Any) -> list[str]:
    if ground_truth is None:
        return []
    if isinstance(ground_truth, str):
        return [ground_truth]
    if isinstance(ground_truth, numbers.Number):
        return [str(ground_truth)]
    if isinstance(ground_truth, (list, tuple)):
        out: list[str] = []
        for gt in ground_truth:
            out.extend(_truths(gt))
        return out
    raise TypeError(f"ground_truth must be a string, a number or a list, got {type(ground_truth)!r}")


def grade_answer(answer: str, ground_truth: Any, mode: str = "course", fast: bool = True) -> bool:
    """Is an already-extracted answer right for any of the ground truths?"""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    truths = _truths(ground_truth)
    normalise = len(answer) <= MAX_ANSWER_CHARS or len(answer.strip()) <= MAX_ANSWER_CHARS
    if mode == "accurate":
        from .accurate import grade_accurate

        return normalise and any(grade_accurate(answer, gt) for gt in truths)
    return any(grade_course(answer, gt, fast, normalise) for gt in truths)


def r1_zero_reward_fn(
    response: str, ground_truth: Any, fast: bool = True, *, mode: str = "course"
) -> dict[str, float]:
    """Reward for an r1_zero completion (the text after ``Assistant: <think>``).

    format_reward is 1 iff the response contains ``"</think> <answer>"`` and ``"</answer>"``.
    Course mode grades the text after the last ``<answer>`` (all ``</answer>`` removed);
    accurate mode grades the text up to the next ``</answer>``.  A ``\\boxed{...}`` inside is
    graded by its content; answer 0 when no box content can be extracted.
    """
    if not has_r1_zero_format(response):
        return _result(0.0, 0.0)
    answer = answer_span(response) if mode == "accurate" else course_answer_span(response)
    if "\\boxed" in answer:
        answer = extract_boxed_answer(answer)
        if answer is None:
            return _result(1.0, 0.0)
    return _result(1.0, 1.0 if grade_answer(answer, ground_truth, mode, fast) else 0.0)


def question_only_reward_fn(
    response: str, ground_truth: Any, fast: bool = True, *, mode: str = "course"
) -> dict[str, float]:
    """Reward for the question_only prompt: the last ``\\boxed{...}`` is the answer.

    No box (and, as in the course, no ``####`` line) -> all zeros; otherwise format 1.
    """
    answer = course_extract_answer(response)
    if answer is None:
        return _result(0.0, 0.0)
    return _result(1.0, 1.0 if grade_answer(answer, ground_truth, mode, fast) else 0.0)


def accurate_reward_fn(response: str, ground_truth: Any, prompt: str = "r1_zero") -> dict[str, float]:
    """Accurate-mode reward (training rewards, analysis) for ``prompt`` r1_zero or question_only."""
    if prompt == "r1_zero":
        return r1_zero_reward_fn(response, ground_truth, mode="accurate")
    if prompt == "question_only":
        return question_only_reward_fn(response, ground_truth, mode="accurate")
    raise ValueError(f"prompt must be 'r1_zero' or 'question_only', got {prompt!r}")

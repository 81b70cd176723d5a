"""Answer extraction: the r1_zero format rule, the ``<answer>`` span and ``\\boxed{...}`` content.

The course grader's rules are reproduced exactly (``course_*``); the accurate mode uses
``answer_span`` (text between the last ``<answer>`` and the next ``</answer>``), which
ignores text a model writes after its answer.  All scans are linear-time string methods so
that 100k-character responses stay cheap.
"""

from __future__ import annotations

import re

THINK_ANSWER = "</think> <answer>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

_BRACES = re.compile(r"[{}]")


def has_r1_zero_format(response: str) -> bool:
    """The course's strict format rule: ``"</think> <answer>"`` and ``"</answer>"`` both occur."""
    return THINK_ANSWER in response and ANSWER_CLOSE in response


def course_answer_span(response: str) -> str:
    """Text after the last ``<answer>`` with every ``</answer>`` removed (course rule)."""
    return response.rsplit(ANSWER_OPEN, 1)[-1].replace(ANSWER_CLOSE, "")


def answer_span(response: str) -> str:
    """Text between the last ``<answer>`` and the first ``</answer>`` after it (accurate rule)."""
    tail = response.rsplit(ANSWER_OPEN, 1)[-1]
    return tail.split(ANSWER_CLOSE, 1)[0]


def last_boxed_only_string(text: str) -> str | None:
    """The last ``\\boxed...`` (or ``\\fbox...``) up to its balancing ``}``, or ``None``.

    Brace counting starts at the macro and closes at the first ``}`` that brings the depth
    back to zero (the course's rule, including its quirks: ``\\boxed 5`` never closes).
    """
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    depth = 0
    for m in _BRACES.finditer(text, idx):
        if m.group() == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return text[idx : m.end()]
    return None


def remove_boxed(s: str | None) -> str | None:
    """Content of ``\\boxed{...}``; ``None`` unless ``s`` is exactly such a group."""
    left = "\\boxed{"
    if s is None or not s.startswith(left) or not s.endswith("}"):
        return None
    return s[len(left) : -1]


def extract_boxed_answer(text: str) -> str | None:
    return remove_boxed(last_boxed_only_string(text))


def course_extract_answer(passage: str) -> str | None:
    """Course rule: last boxed content if ``\\boxed`` occurs, else the text after ``####``."""
    if "\\boxed" in passage:
        return extract_boxed_answer(passage)
    if "####" in passage:
        return passage.split("####")[-1].strip()
    return None

"""The course's answer comparison (``grade`` in drgrpo_grader.py), reimplemented safely.

``grade_course(given, ground_truth, fast=True)`` returns the course's verdict: a match under
the MATH normaliser, or under the sympy-path normaliser, or element-wise symbolic equality
(tuples/intervals split, unreduced fractions and integers compared strictly, as in the
course).  The symbolic step uses ``equivalence.course_sympy_equal`` instead of
``parse_expr`` + ``simplify``: same decisions on the language graders meet, no eval, no hang.
``fast=False`` adds the course's math-verify step, run by math-verify itself in a grading worker
process (see ``course_slow``).
"""

from __future__ import annotations

from .course_slow import latex_equal
from .equivalence import course_sympy_equal
from .extract import course_extract_answer
from .normalize import (
    is_frac,
    mathd_normalize,
    str_is_int,
    strip_properly_formatted_commas,
    sympy_normalize,
)

__all__ = ["grade_course", "grade_mathd", "grade_sympy", "split_tuple"]

_TUPLE_CHARS = "()[]"


def split_tuple(expr: str) -> list[str]:
    """Elements of a bracketed tuple/interval, else ``[expr]`` (course rule)."""
    expr = strip_properly_formatted_commas(expr)
    if len(expr) == 0:
        return []
    if (
        len(expr) > 2
        and expr[0] in _TUPLE_CHARS
        and expr[-1] in _TUPLE_CHARS
        and not any(ch in expr[1:-1] for ch in _TUPLE_CHARS)
    ):
        return [elem.strip() for elem in expr[1:-1].split(",")]
    return [expr]


def grade_mathd(given: str, ground_truth: str) -> bool:
    return mathd_normalize(ground_truth) == mathd_normalize(given)


def grade_sympy(given: str, ground_truth: str) -> bool:
    gt_n = sympy_normalize(ground_truth)
    given_n = sympy_normalize(given)
    if gt_n == given_n:
        return True
    if len(given_n) == 0:
        return False
    gt_elems = split_tuple(gt_n)
    given_elems = split_tuple(given_n)
    if len(gt_elems) > 1 and (gt_n[0] != given_n[0] or gt_n[-1] != given_n[-1]):
        return False
    if len(gt_elems) != len(given_elems):
        return False
    for gt_elem, given_elem in zip(gt_elems, given_elems):
        if is_frac(gt_elem) and is_frac(given_elem):
            # unreduced fractions are not accepted: no simplification here
            ok = gt_elem == given_elem
        elif str_is_int(gt_elem) != str_is_int(given_elem):
            ok = False  # an integer truth needs an exact match
        else:
            ok = course_sympy_equal(gt_elem, given_elem)
        if not ok:
            return False
    return True


def grade_course(given: str, ground_truth: str, fast: bool = True, normalise: bool = True) -> bool:
    """Course verdict for an extracted answer against one ground-truth string.

    ``normalise=False`` skips the string and sympy checks (answers too long for our normalisers, which
    score 0 there); the math-verify step of ``fast=False`` still sees them, as in the course.
    """
    if "\\boxed" in ground_truth or "####" in ground_truth:
        ground_truth = course_extract_answer(ground_truth)
        if ground_truth is None:
            return False
    if normalise and (grade_mathd(given, ground_truth) or grade_sympy(given, ground_truth)):
        return True
    return not fast and latex_equal(given, ground_truth)

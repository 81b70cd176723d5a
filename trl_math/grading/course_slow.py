"""The course's ``fast=False`` extra step, approximated without math-verify's eval paths.

The course ends ``grade(..., fast=False)`` with ``is_latex_equal``: a repetition guard, then
math-verify's ``parse``/``verify``.  Those call ``parse_expr``/``sympify`` on model text and
enforce time with ``signal.alarm`` (main thread only), so we do not call them.  Instead we
reproduce math-verify's observable leniency on top of the accurate normaliser:

* the answer is the last value offered ("12 or 10" -> 10: math-verify extracts the
  right-most match), but ``\\pm 10`` is a pair of values and does not match 10;
* bare lists are compared as sets (``-1, 2`` equals ``2, -1``); bracketed tuples in order,
  the brackets of a pair ignored (``[2, -1]`` equals ``(2, -1)``);
* percentages also count as fractions (``50\\%`` equals 1/2) and fractions need not be reduced;
* decimals with at least 6 places are compared after rounding to 6 places (math-verify's
  ``float_rounding``).

It is an approximation; ``benchmarks/grader_bench.py`` reports its agreement with the
course's ``fast=False`` labels.
"""

from __future__ import annotations

import re
from itertools import islice, zip_longest

from . import accurate as acc
from .equivalence import Unsupported, evaluate
from .normalize import sympy_normalize

__all__ = ["latex_equal_slow", "repeatness"]

_LAST_ALT = re.compile(r"^.*(?:\bor\b|\band\b)\s*", re.IGNORECASE | re.DOTALL)
_PERCENT = re.compile(r"\\?%|\bpercent\b", re.IGNORECASE)
_SUBSCRIPT = re.compile(r"_\{?\w+\}?")


def repeatness(s: str) -> bool:
    """The course's repetition test (share of repeated substrings above 0.2)."""

    def ranks(seq):
        index = {v: i for i, v in enumerate(sorted(set(seq)))}
        return [index[v] for v in seq]

    arr = [ord(c) for c in s]
    n = len(arr)
    if n <= 1:
        return False
    line, k = ranks(arr), 1
    while k < n - 1:
        line = ranks(list(zip_longest(line, islice(line, k, None), fillvalue=-1)))
        k <<= 1
    sa = [0] * n
    for i, r in enumerate(line):
        sa[r] = i
    lcp_total, h = 0, 0
    for i in range(n):
        if line[i] == n - 1:
            h = 0
            continue
        j = sa[line[i] + 1]
        while i + h < n and j + h < n and arr[i + h] == arr[j + h]:
            h += 1
        lcp_total += h
        if h > 0:
            h -= 1
    return (lcp_total * 2 / (n * (n + 1))) > 0.2


def _value(s: str):
    tree = acc._as_math(s)
    if tree is None:
        return None
    try:
        return evaluate(tree)
    except (Unsupported, ValueError, ZeroDivisionError, OverflowError):
        return None


def _close(a: str, g: str) -> bool:
    if acc._atom_equal(a, g):
        return True
    va, vg = _value(a), _value(g)
    if va is None or vg is None:
        return False
    if re.search(r"\.\d{6,}", a) or re.search(r"\.\d{6,}", g):
        return abs(va - vg) <= 5e-7 * max(1, abs(vg))
    return False


def _lenient_equal(a: str, g: str) -> bool:
    sa, sg = acc._structure(a), acc._structure(g)
    if sa[0] == "seq" and sg[0] == "seq":
        ea, eg = sa[3], sg[3]
        if len(ea) != len(eg):
            return False
        if sa[1] and sg[1]:  # both bracketed: ordered tuples/intervals, brackets of pairs free
            if (sa[1], sa[2]) != (sg[1], sg[2]) and len(eg) > 2:
                return False
            return all(_close(x, y) for x, y in zip(ea, eg))
        remaining = list(eg)
        for x in ea:
            for i, y in enumerate(remaining):
                if _close(x, y):
                    del remaining[i]
                    break
            else:
                return False
        return True
    if sa[0] == "atom" and sg[0] == "atom":
        return _close(a, g)
    return acc._equal_structured(a, g)


def latex_equal_slow(given: str, ground_truth: str) -> bool:
    """Approximation of the course's ``is_latex_equal`` (bounded, no eval)."""
    if (len(given) > 128 and repeatness(given[:2000])) or (
        len(ground_truth) > 128 and repeatness(ground_truth[:2000])
    ):
        return False
    if sympy_normalize(ground_truth) == sympy_normalize(given):
        return True
    if acc._too_long(given, ground_truth):
        return False
    _, g = acc._truth_form(ground_truth)
    a = acc.canonical_answer(given)
    if not a or not g:
        return False
    if acc.is_hedge(a, g):
        if "\\pm" in a or "\\mp" in a:
            return False  # math-verify reads "\\pm 2" as a set of two values
        a = _LAST_ALT.sub("", a).strip()
    a = _SUBSCRIPT.sub("", a)
    g = _SUBSCRIPT.sub("", g)
    lhs, rhs = acc._lhs(a)
    if lhs is not None:
        a = rhs.strip()
    if "=" in a and "=" not in g:
        a = a.rsplit("=", 1)[-1].strip()
    if _lenient_equal(a, g):
        return True
    # percentages: 50% also reads as 1/2
    raw = given
    if _PERCENT.search(raw) or _PERCENT.search(ground_truth):
        va, vg = _value(a), _value(g)
        if va is not None and vg is not None:
            if _PERCENT.search(raw) and not _PERCENT.search(ground_truth):
                va = va / 100
            elif _PERCENT.search(ground_truth) and not _PERCENT.search(raw):
                vg = vg / 100
            return abs(va - vg) <= 1e-9 * max(1, abs(vg))
    return False

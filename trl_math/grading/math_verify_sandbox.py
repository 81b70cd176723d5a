"""The course's math-verify step, inside a grading worker: the only module that imports math-verify.

Imported by the grading workers (the forkserver preloads it) and never by the trainer's process.
``isolated_latex_equal`` runs the course's ``is_latex_equal`` (drgrpo_grader.py) in a fresh fork of the
worker for every answer, so nothing one answer does (caches, memory, module state) outlives it; the fork
dies with the worker when the pool kills it at the time limit, and inherits the worker's memory limit.

What may reach Python evaluation.  In math-verify 0.7.0 with latex2sympy2_extended 1.10.1 the only code
that evaluates text is sympy's ``parse_expr`` (``sympify`` of a string goes through it too):

* math-verify calls it on the ``expr`` group of its expression regex (``ExprExtractionConfig``), which
  admits only digits, ``.``, white space and ``+ - * × / ^ ( ) ÷``: arithmetic, never a name;
* latex2sympy builds sympy objects from its ANTLR parse tree (names become ``Symbol``/``Function``, never
  code); its ``sympify`` calls get those objects, and its ``parse_expr`` is reached only through
  ``variable_values``, which math-verify never passes.

So no answer reaches Python evaluation with anything but arithmetic, and refusing answers for the way
they look (``__import__``, quotes, ``lambda``) would change the course's verdicts: math-verify extracts
the ``1`` of ``1+__import__('os').system('...')`` and the course grades it equal to ``1``.  The rule is
enforced where it matters instead: before math-verify is imported, ``parse_expr`` is replaced by one that
refuses (``RefusedEvaluation``) any text outside that arithmetic alphabet, unless a module is being imported
(sympy sympifies constants of its own, such as the unit prefixes ``simplify`` loads, at import; module code
never holds answer text).  With the pinned versions it never fires on the grader corpus; were another path
to hand it a name, the answer would score 0 and count as an error (the course's verdict is then unknowable:
it would have evaluated the text).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import sys
import threading
from itertools import islice, zip_longest

from .course_slow import check_course_slow
from .normalize import sympy_normalize

check_course_slow()  # ImportError (naming the extra) unless the course's versions are installed

import sympy.parsing  # noqa: E402
import sympy.parsing.sympy_parser as sympy_parser  # noqa: E402

# Modules sympy imports lazily on math-verify's paths (simplify imports sympy.physics.units, whose unit
# prefixes sympify their own names): imported here, once, before the guard, instead of in every answer's
# process (this list is what grading the whole grader corpus imported).
for _module in ("sympy.physics.units", "sympy.combinatorics", "sympy.concrete.delta", "sympy.sets.setexpr",
                "sympy.sets.handlers.issubset", "sympy.tensor.tensor", "sympy.assumptions.wrapper"):
    __import__(_module)

__all__ = ["RefusedEvaluation", "is_latex_equal", "isolated_latex_equal", "run_isolated"]

_ARITHMETIC = re.compile(r"[\d.\s+\-*/()×÷]*")
_parse_expr = sympy_parser.parse_expr


class RefusedEvaluation(BaseException):
    """Text outside the arithmetic alphabet was about to be evaluated.  A BaseException, so that
    math-verify's and the course's ``except Exception`` cannot turn it into a verdict."""


def _importing() -> bool:
    """Is a module being imported (its own constants, such as sympy's unit prefixes, being sympified)?"""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _arithmetic_only_parse_expr(s, *args, **kwargs):
    if not (isinstance(s, str) and _ARITHMETIC.fullmatch(s)) and not _importing():
        raise RefusedEvaluation(f"refused to evaluate {str(s)[:80]!r}")
    return _parse_expr(s, *args, **kwargs)


sympy_parser.parse_expr = sympy.parsing.parse_expr = _arithmetic_only_parse_expr

import latex2sympy2_extended.latex2sympy2 as _l2s  # noqa: E402
import math_verify.parser as _mv_parser  # noqa: E402
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify  # noqa: E402

_l2s.parse_expr = _mv_parser.parse_expr = _arithmetic_only_parse_expr


class _MemoryErrorSeen(logging.Handler):
    """math-verify catches every Exception and logs it: a MemoryError (the memory limit) it swallowed
    still marks the answer, instead of passing for an ordinary "not equal"."""

    seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], MemoryError):
            _MemoryErrorSeen.seen = True


# math-verify logs a traceback for every answer it cannot parse: keep the workers' stderr quiet.
_mv_logger = logging.getLogger("math_verify")
_mv_logger.handlers[:] = [_MemoryErrorSeen(logging.ERROR)]
_mv_logger.propagate = False

# The course's call: boxed first, then any LaTeX, then plain expressions; every match tried, since it passes
# extraction_mode as a list, which math-verify compares with the string "first_match".
_PARSE_OPTIONS = dict(
    extraction_config=(LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()),
    fallback_mode="no_fallback", extraction_mode=["first_match"], parsing_timeout=1,
)


def repeatness(s: str) -> bool:
    """The course's repetition test: share of repeated substrings (suffix array + LCP) above 0.2."""

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


def _raise_timeout(signum, frame):
    raise TimeoutError("Timeout")


def is_latex_equal(given: str, ground_truth: str) -> bool:
    """The course's ``is_latex_equal``, step for step (main thread only: signal.alarm timeouts).

    The course's outer 1 s alarm covers the guard and the normalisation; math-verify's own 1 s alarms
    (parse, parse, verify) each replace it, as they do in the course.
    """
    try:
        signal.signal(signal.SIGALRM, _raise_timeout)
        signal.alarm(1)
        try:
            if (len(given) > 128 and repeatness(given)) or (
                len(ground_truth) > 128 and repeatness(ground_truth)
            ):
                return False
            if sympy_normalize(ground_truth) == sympy_normalize(given):
                return True
            if "$" not in given:
                given = f"${given}$"
            if "$" not in ground_truth:
                ground_truth = f"${ground_truth}$"
            return verify(parse(ground_truth, **_PARSE_OPTIONS), parse(given, **_PARSE_OPTIONS),
                          timeout_seconds=1)
        except Exception:
            return False
        finally:
            signal.alarm(0)
    except TimeoutError:
        return False


_libc = ctypes.CDLL(None)  # this process's own symbols, libc's prctl among them (Linux)


def _die_with_parent(parent: int) -> None:
    """The kernel kills this process when its parent dies (the pool kills a worker at its time limit)."""
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


def run_isolated(fn, *args) -> bool:
    """``bool(fn(*args))`` computed in a fresh fork of this process, which exits afterwards.

    Raises MemoryError when the fork ran past the memory limit (the worker is then replaced), RuntimeError
    when it refused to evaluate text or ended without a verdict (the pool counts an error).
    """
    parent = os.getpid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the fork: one answer, then os._exit (no atexit handlers, no flushed parent buffers)
        os.close(read_end)
        outcome = b"E"
        try:
            _die_with_parent(parent)
            outcome = b"1" if fn(*args) else b"0"
            if _MemoryErrorSeen.seen:
                outcome = b"M"
        except MemoryError:
            outcome = b"M"
        except RefusedEvaluation:
            outcome = b"R"
        finally:
            os.write(write_end, outcome)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read()
    _, status = os.waitpid(pid, 0)
    if outcome in (b"0", b"1"):
        return outcome == b"1"
    if outcome == b"M":
        raise MemoryError("the math-verify step ran past the grading worker's memory limit")
    if outcome == b"R":
        raise RuntimeError("the math-verify step refused to evaluate non-arithmetic text")
    raise RuntimeError(f"the math-verify process ended without a verdict (wait status {status})")


def isolated_latex_equal(given: str, ground_truth: str) -> bool:
    """The course's ``is_latex_equal`` in a fresh process (see ``run_isolated``)."""
    return run_isolated(is_latex_equal, given, ground_truth)


# Fixed forms (never an answer) that build math-verify's parsers, ANTLR's prediction tables and sympy's caches
# once, in the worker, so that each answer's fork starts warm (about 8 ms less per answer, measured on the grader
# corpus).
_WARM_UP = [
    ("0.5", "\\frac{1}{2}"), ("(1, 2)", "\\left( 1, 2 \\right)"), ("3/4", "x = 0.75"), ("2\\sqrt{3}", "\\sqrt{12}"),
    ("\\frac{\\pi}{4}", "45^\\circ"), ("[0, 1)", "(-\\infty, 0] \\cup [1, \\infty)"), ("x^2 + 2x + 1", "(x+1)^2"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}"), ("50\\%", "0.5"),
    ("\\text{(A)}", "A"), ("-3, 2", "2, -3"), ("y = 2x + 1", "2x+1"), ("1,000", "1000"),
    ("\\dfrac{3}{8}", "\\tfrac{3}{8}"), ("10 \\text{ dollars}", "\\$10"), ("\\{1, 2\\}", "\\{2, 1\\}"),
    ("\\sin x", "\\cos x"), ("\\log_2 8", "3"), ("\\binom{5}{2}", "10"), ("a < 3", "(-\\infty, 3)"),
    ("5!", "120"), ("2 \\pm \\sqrt{3}", "2+\\sqrt3"), ("e^{i\\pi}", "-1"), ("\\infty", "\\infty"),
    ("0.333", "\\frac13"),
]


if threading.current_thread() is threading.main_thread():  # signal.alarm works in the main thread only
    for _given, _truth in _WARM_UP:
        is_latex_equal(_given, _truth)

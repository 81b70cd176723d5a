"""The course's ``fast=False`` step, as the trainer's process sees it: math-verify, run elsewhere.

With ``fast=False`` the course's ``grade`` ends with ``is_latex_equal``: a repetition guard, a
normalised-string match, then math-verify's ``parse`` + ``verify``.  math-verify reaches sympy's
``parse_expr`` (Python evaluation) and some answers run for minutes or exhaust memory, so it runs only
in the grading worker processes (``pool.py``), one fresh process per answer (``math_verify_sandbox``).
This module never imports math-verify: ``latex_equal`` runs the step in place when the caller is a
grading worker, and otherwise hands it to a one-worker ``GradingPool`` started on first use (hard time
limit, memory limit, the same sandbox).

The step needs the versions the course pins (``trl-math[course-slow]``); ``check_course_slow`` says
so, naming the extra, before any grading starts.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import os
import threading

__all__ = ["COURSE_SLOW_PINS", "CourseSlowUnavailable", "check_course_slow", "latex_equal"]

# The course's uv.lock pins math-verify 0.7.0 (which pins latex2sympy2_extended 1.10.1) and sympy 1.13.1.
# torch needs sympy >= 1.13.3; the course's fast=False labels agree on every dev row under 1.13.1, 1.13.3 and
# 1.14.0 (benchmarks/grader_bench.py), so sympy is left to torch. math-verify 0.9.0 disagrees on 8 rows.
COURSE_SLOW_PINS = {"math-verify": "0.7.0", "latex2sympy2_extended": "1.10.1"}
EXTRA = "trl-math[course-slow]"

# The one-worker pool that grades the math-verify step of calls made outside a grading worker, and the
# process that started it (a forked child starts its own rather than share the parent's pipes).
_helper = None
_helper_pid = None
_helper_lock = threading.Lock()


class CourseSlowUnavailable(ImportError):
    """``fast=False`` was asked for without the course's math-verify installed."""


def check_course_slow() -> None:
    """Raise ``CourseSlowUnavailable`` (naming the extra) unless the course's pins are installed.

    Reads package metadata only: math-verify is never imported here.
    """
    for dist, want in COURSE_SLOW_PINS.items():
        try:
            have = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise CourseSlowUnavailable(
                f"fast=False grades with the course's math-verify step, which needs {dist}=={want}: "
                f"pip install '{EXTRA}'") from None
        if have != want:
            raise CourseSlowUnavailable(
                f"fast=False grades as the course does only with {dist}=={want} (the course's pin), "
                f"found {have}: pip install '{EXTRA}'")


def latex_equal(given: str, ground_truth: str) -> bool:
    """The course's ``is_latex_equal(given, ground_truth)``, computed by math-verify in a sandbox.

    An answer that runs past the time limit (or the memory limit) is not equal; the pool that graded
    it counts it.
    """
    from .pool import in_grading_worker

    if in_grading_worker():
        from .math_verify_sandbox import isolated_latex_equal

        return isolated_latex_equal(given, ground_truth)
    check_course_slow()
    result = _helper_pool().grade([given], [ground_truth])[0]
    return result["answer_reward"] == 1.0


def verdict_item(given: str, ground_truth: str, **pool_options) -> dict[str, float]:
    """The helper pool's per-item function: ``latex_equal`` as a reward dict (the pool's currency)."""
    equal = 1.0 if latex_equal(given, ground_truth) else 0.0
    return {"format_reward": 1.0, "answer_reward": equal, "reward": equal}


def _helper_pool():
    global _helper, _helper_pid
    with _helper_lock:
        if _helper is None or _helper_pid != os.getpid():
            from .pool import GradingPool

            _helper = GradingPool(processes=1, grade_fn=verdict_item)
            _helper_pid = os.getpid()
            atexit.register(_helper.close)
        return _helper

"""Clear the graders' memo caches (benchmarks measure cold-cache throughput)."""

from __future__ import annotations


def clear_caches() -> None:
    from . import accurate, normalize

    normalize.mathd_normalize.cache_clear()
    normalize.sympy_normalize.cache_clear()
    accurate.canonical_answer.cache_clear()
    accurate._as_math.cache_clear()
    accurate._truth_form.cache_clear()

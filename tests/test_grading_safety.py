"""Grading safety: in the calling process model text never reaches eval/exec/sympify/parse_expr, and every call is
fast.  fast=False's math-verify step runs in the grading workers: tests/test_grading_course_slow.py."""

from __future__ import annotations

import builtins
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trl_math.grading import GradingPool, question_only_reward_fn, r1_zero_reward_fn

GRADER_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "grader"
needs_data = pytest.mark.skipif(
    not (GRADER_DATA / "corpus.jsonl").exists(),
    reason="grader corpus not found at ../shared/data/grader (shared data is not checked out)",
)

PAYLOADS = [
    "__import__('os').system('touch PWNED')",
    "__import__(\"os\").system(\"touch PWNED\")",
    "(__import__('os').system('touch PWNED'))",
    "1+__import__('os').system('touch PWNED')",
    "x = __import__('os').system('touch PWNED')",
    "eval(\"__import__('os').system('touch PWNED')\")",
    "exec(\"import os; os.system('touch PWNED')\")",
    "getattr(__import__('os'), 'system')('touch PWNED')",
    "[c for c in ().__class__.__bases__[0].__subclasses__() if c.__name__ == 'Popen'][0]('touch PWNED', shell=True)",
    "().__class__.__bases__[0].__subclasses__()",
    "lambda: __import__('os').system('touch PWNED')",
    "(lambda: __import__('os').system('touch PWNED'))()",
    "open('PWNED', 'w').write('x')",
    "__builtins__.__import__('os').system('touch PWNED')",
    "globals()['__builtins__']['__import__']('os').system('touch PWNED')",
    "\\text{__import__('os').system('touch PWNED')}",
    "\\frac{__import__('os').system('touch PWNED')}{2}",
    "\\sqrt{__import__('os').system('touch PWNED')}",
    "$__import__('os').system('touch PWNED')$",
    "The answer is __import__('os').system('touch PWNED')",
    "__import__('pathlib').Path('PWNED').touch()",
    "Symbol('x').__class__.__init__.__globals__['os'].system('touch PWNED')",
    "__import__('os').system('touch PWNED') or 1",
    "2*__import__('os').system('touch PWNED')",
    "\\left(__import__('os').system('touch PWNED'), 1\\right)",
    "__import__('time').sleep(20)",
    "ｅｖａｌ('__import__(\"os\").system(\"touch PWNED\")')",
    "__im\u200bport__('os').system('touch PWNED')",
]
TRUTHS = ["0", "1", "\\frac{1}{2}", "x", "(1,2)", "__import__('os').system('touch PWNED')"]


def _responses(payload: str) -> list[tuple[str, str]]:
    return [
        ("r1_zero", f"think </think> <answer> {payload} </answer>"),
        ("r1_zero", f"think </think> <answer> \\boxed{{{payload}}} </answer>"),
        ("r1_zero", f"think </think> <answer> $\\boxed{{{payload}}}$. </answer>"),
        ("question_only", f"so \\boxed{{{payload}}}"),
    ]


def _grade_everything() -> int:
    n = 0
    for payload in PAYLOADS:
        for prompt, resp in _responses(payload):
            for gt in TRUTHS:
                for kw in ({}, {"mode": "accurate"}):
                    fn = r1_zero_reward_fn if prompt == "r1_zero" else question_only_reward_fn
                    out = fn(resp, gt, **kw)
                    assert out["answer_reward"] in (0.0, 1.0)
                    n += 1
    return n


def test_injection_strings_never_execute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _grade_everything()  # warm every code path (lazy imports use exec) before the traps
    assert not (tmp_path / "PWNED").exists()

    calls: list[str] = []

    def trap(name):
        def f(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called during grading")
        return f

    import sys

    import sympy
    import sympy.parsing.sympy_parser as sympy_parser

    sympify_mod = sys.modules["sympy.core.sympify"]

    monkeypatch.setattr(builtins, "eval", trap("eval"))
    monkeypatch.setattr(builtins, "exec", trap("exec"))
    monkeypatch.setattr(sympy, "sympify", trap("sympy.sympify"))
    monkeypatch.setattr(sympify_mod, "sympify", trap("sympify"))
    monkeypatch.setattr(sympy_parser, "parse_expr", trap("parse_expr"))
    monkeypatch.setattr(sympy_parser, "eval_expr", trap("eval_expr"))
    monkeypatch.setattr(os, "system", trap("os.system"))
    try:
        n = _grade_everything()
    finally:
        monkeypatch.undo()
    assert n == len(PAYLOADS) * 4 * len(TRUTHS) * 2
    assert calls == []
    assert not (tmp_path / "PWNED").exists()
    assert list(tmp_path.iterdir()) == []


def test_grading_package_does_not_import_parse_expr_paths():
    """Only the workers' math-verify step (math_verify_sandbox.py) may import math-verify or name sympy's
    evaluators; every other module of the package compares answers with our own bounded parser."""
    import trl_math.grading as g

    sources = {p.name: p.read_text() for p in Path(g.__file__).parent.glob("*.py")}
    importers = [name for name, text in sources.items() if re.search(r"^\s*(from|import) math_verify\b", text, re.M)]
    assert importers == ["math_verify_sandbox.py"]
    src = "".join(text for name, text in sources.items() if name != "math_verify_sandbox.py")
    for needle in ("eval(", "exec(", "sympify(", "parse_expr(", "parse_latex(", "latex2sympy("):
        assert needle not in src.replace("_eval(", "").replace(".ev(", ""), needle


# ------------------------------------------------------------------ bounded time

PATHOLOGICAL = [
    "10**10**10", "9^9^9^9", "2^{2^{2^{2^{2^{2}}}}}", "1000000!", "(" * 6000 + "1" + ")" * 6000,
    "{" * 6000 + "1" + "}" * 6000, "\\frac{" * 3000 + "1" + "}{2}" * 3000, "7" * 20000,
    "0." + "3" * 20000, "\\sqrt{" * 2000 + "2" + "}" * 2000, "x^" * 3000 + "2",
    "(x+1)^{100000}", "((x+1)**100)**100", "1e999999999", "9" * 5000 + "/" + "7" * 5000,
    "\\begin{pmatrix}" + "&".join(["1"] * 3000) + "\\end{pmatrix}", "a" * 100000,
    "\\boxed{" * 5000, "," * 50000, "$" * 50000, "\\" * 50000, "1/0", "0^{-1}", "nan", "oo - oo",
    "\\int_0^\\infty e^{-x^2} dx", "\\lim_{x\\to 0} \\frac{\\sin x}{x}", "\\sum_{n=1}^{10^{100}} n",
    "2 \\text{ or } " * 3000, "x" * 5000 + "y" * 5000,
    # just under the answer-length cap: the normalisers' worst cases
    "a " * 1999, "1 " * 1999, "\\frac" * 790, "\\sqrt" * 790, "x^" * 1999, "(1," * 1300,
    "1/" * 1999, "cm " * 1300, "\\text{ " * 490, "=" * 3999, "1" + "0" * 3998,
]


def _check_rows(rows, fn) -> float:
    worst = 0.0
    for resp, gt in rows:
        t = time.perf_counter()
        fn(resp, gt)
        worst = max(worst, time.perf_counter() - t)
    return worst


def _all_modes(resp, gt):
    r1_zero_reward_fn(resp, gt)
    r1_zero_reward_fn(resp, gt, mode="accurate")


def _synthetic_rows() -> list[tuple[str, str]]:
    rows = []
    for p in PATHOLOGICAL:
        for gt in ("\\frac{1}{3}", "2", "x+1", "(1,2)"):
            rows.append((f"t </think> <answer> {p} </answer>", gt))
            rows.append((f"t </think> <answer> \\boxed{{{p}}} </answer>", gt))
            rows.append(("t </think> <answer> 2 </answer>", p))
    return rows


def _corpus_sample() -> list[tuple[str, str]]:
    rows = []
    with open(GRADER_DATA / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
    rng = random.Random(0)
    chosen = [r for r in rows if r["kind"].startswith(("patho_", "unicode_", "fmt_"))]
    chosen += rng.sample(rows, 400)
    return [(r["response"], r["ground_truth"]) for r in chosen]


def test_pathological_inputs_are_fast_in_main_thread():
    assert _check_rows(_synthetic_rows(), _all_modes) < 1.0


@needs_data
def test_corpus_rows_are_fast_in_main_thread_and_threads():
    rows = _corpus_sample() + _synthetic_rows()
    assert threading.current_thread() is threading.main_thread()
    assert _check_rows(rows, _all_modes) < 1.0
    chunks = [rows[i::4] for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as ex:
        worst = max(ex.map(lambda c: _check_rows(c, _all_modes), chunks))
    assert worst < 1.0


@needs_data
def test_corpus_rows_in_worker_processes_have_no_timeouts():
    rows = _corpus_sample()
    with GradingPool(processes=2, timeout=1.0) as pool:
        for kw in ({}, {"mode": "accurate"}):
            res = pool.grade([r for r, _ in rows], [g for _, g in rows], **kw)
            assert len(res) == len(rows)
        assert pool.stats["timeouts"] == 0 and pool.stats["errors"] == 0

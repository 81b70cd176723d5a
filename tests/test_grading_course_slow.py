"""fast=False: the course's math-verify step, by math-verify itself, only inside the grading workers.

Checked against the course grader's own fast=False labels (../shared/data/grader/dev_labels_fast_false.jsonl),
with injection attempts and the corpus's pathological rows, and with workers killed at their time and memory
limits.  The test process grades directly (r1_zero_reward_fn) and through pools, and never imports math-verify.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from trl_math.grading import GradingPool, TRLReward, question_only_reward_fn, r1_zero_reward_fn
from trl_math.grading.course_slow import CourseSlowUnavailable, check_course_slow

GRADER_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "grader"
needs_data = pytest.mark.skipif(
    not (GRADER_DATA / "dev_labels_fast_false.jsonl").exists(),
    reason="grader corpus not found at ../shared/data/grader (shared data is not checked out)",
)


def _course_slow_missing() -> str | None:
    try:
        check_course_slow()
    except CourseSlowUnavailable as err:
        return str(err)
    return None


needs_course_slow = pytest.mark.skipif(_course_slow_missing() is not None,
                                       reason=f"fast=False needs the course's math-verify: {_course_slow_missing()}")

# The pool's default hard limit per answer, and a generous bound on replacing a killed worker.
LIMIT_S = 1.0
RESTART_S = 3.0


def _load(name: str) -> list[dict]:
    with open(GRADER_DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _no_math_verify_here() -> None:
    assert not [m for m in sys.modules if m.split(".")[0] in ("math_verify", "latex2sympy2_extended")]


# ------------------------------------------------------------------ agreement with the course


@needs_data
@needs_course_slow
def test_pool_agrees_with_the_course_fast_false_labels():
    """Every dev row through the default pool (2 workers, 1 s per answer), against the course's labels."""
    rows = {r["id"]: r for r in _load("corpus.jsonl")}
    labels = _load("dev_labels_fast_false.jsonl")
    with GradingPool() as pool:
        results = pool.grade([rows[lab["id"]]["response"] for lab in labels],
                             [rows[lab["id"]]["ground_truth"] for lab in labels], fast=False)
        stats = dict(pool.stats)
    scored = agree = 0
    disagreements = []
    for lab, res in zip(labels, results):
        assert res["format_reward"] == lab["format_reward"], lab["id"]
        if lab["status"] != "ok":  # past 5 s for the course: no label to agree with
            continue
        scored += 1
        if res["answer_reward"] == lab["answer_reward"]:
            agree += 1
            continue
        row = rows[lab["id"]]
        cause = (f"past the {LIMIT_S} s limit here, {lab['answer_reward']} for the course (timing)"
                 if res.get("unscored") == "timeout" else f"unexplained ({res})")
        disagreements.append(f"{lab['id']} ({row['kind']}): {cause}; answer "
                             f"{row['response'].rsplit('<answer>', 1)[-1][:80]!r} vs {row['ground_truth']!r}")
    print(f"fast=False agreement {agree}/{scored}; pool stats {stats}; disagreements: {disagreements}")
    assert scored == 3843
    assert agree / scored >= 0.995, disagreements
    # a disagreement can only be a row that ran past the time limit here (machine-speed dependent)
    assert not [d for d in disagreements if "unexplained" in d], disagreements
    # the pathological rows killed their workers; the pool replaced them and graded every other row
    assert stats["timeouts"] >= 16 and stats["restarts"] == stats["timeouts"] + stats["memory_errors"]
    assert stats["errors"] == 0
    _no_math_verify_here()


@needs_data
@needs_course_slow
def test_direct_calls_hand_the_step_to_a_worker_and_give_the_courses_result():
    """r1_zero_reward_fn / question_only_reward_fn called as a student calls them: the course's verdicts on the
    dev rows where fast=False changes the result, and on rows it leaves alone; math-verify never loads here."""
    rows = {r["id"]: r for r in _load("corpus.jsonl")}
    fast_labels = {lab["id"]: lab for lab in _load("dev_labels.jsonl")}
    slow_labels = [lab for lab in _load("dev_labels_fast_false.jsonl") if lab["status"] == "ok"]
    changed = [lab for lab in slow_labels if lab["answer_reward"] != fast_labels[lab["id"]]["answer_reward"]]
    unchanged = [lab for lab in slow_labels if lab["format_reward"] == 1 and lab["answer_reward"] == 0][:40]
    assert len(changed) > 200
    for lab in changed[:60] + unchanged:
        row = rows[lab["id"]]
        assert r1_zero_reward_fn(row["response"], row["ground_truth"], fast=False) == {
            "format_reward": lab["format_reward"], "answer_reward": lab["answer_reward"],
            "reward": lab["answer_reward"]}, lab["id"]
    # question_only: the last \boxed{} is the answer, the same step follows
    assert question_only_reward_fn(r"so \boxed{0.333333}", r"\frac{1}{3}", fast=False)["answer_reward"] == 1.0
    assert question_only_reward_fn(r"so \boxed{0.333333}", r"\frac{1}{3}")["answer_reward"] == 0.0
    assert r1_zero_reward_fn("t </think> <answer> The answer is 6 </answer>", "6")["answer_reward"] == 0.0
    assert r1_zero_reward_fn("t </think> <answer> The answer is 6 </answer>", "6", fast=False)["answer_reward"] == 1.0
    assert r1_zero_reward_fn("t </think> <answer> 7 </answer>", "8", fast=False)["answer_reward"] == 0.0
    _no_math_verify_here()


# ------------------------------------------------------------------ hostile and pathological answers


def _payloads(marker: Path, port: int) -> list[str]:
    """Answers that try to reach Python through sympy: each would create `marker`, start a process, change the
    environment or connect to `port` if any of it were ever evaluated."""
    touch = f"__import__('os').system('touch {marker}')"
    return [
        touch, f"1+{touch}", f"{touch} or 1", f"\\left({touch}, 1\\right)", f"$\\boxed{{{touch}}}$",
        f"\\frac{{{touch}}}{{2}}", f"x = {touch}", f"eval(\"{touch}\")", f"exec(\"{touch}\")",
        f"getattr(__import__('os'), 'system')('touch {marker}')",
        f"[c for c in ().__class__.__bases__[0].__subclasses__() if c.__name__ == 'Popen'][0]"
        f"('touch {marker}', shell=True)",
        "().__class__.__bases__[0].__subclasses__()",
        f"(lambda: {touch})()", f"lambda: {touch}",
        f"open('{marker}', 'w').write('x')",
        f"__builtins__.__import__('os').system('touch {marker}')",
        f"globals()['__builtins__']['__import__']('os').system('touch {marker}')",
        f"Symbol('x').__class__.__init__.__globals__['os'].system('touch {marker}')",
        f"__import__('pathlib').Path('{marker}').touch()",
        "__import__('subprocess').Popen(['sleep', '30'])",
        "__import__('os').environ.__setitem__('TRL_MATH_PWNED', '1')",
        f"__import__('socket').create_connection(('127.0.0.1', {port}))",
        f"1 + __import__('socket').create_connection(('127.0.0.1', {port})).fileno()",
        "__import__('time').sleep(20)", "2**__import__('time').sleep(20)",
        f"\\sqrt{{{touch}}}", f"$2+{touch}$", f"The final answer is ${touch}$. I hope",
    ]


def grade_and_inspect(response, ground_truth, **pool_options):
    """Test-only per-item function: grades like the pool's default, then reports what the worker process saw
    happen: a changed environment, a child process left running."""
    from trl_math.grading.pool import grade_item

    before = dict(os.environ)
    result = grade_item(response, ground_truth, **pool_options)
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        children = f.read().split()
    return {**result, "env_changed": dict(os.environ) != before, "children": len(children)}


def probe_evaluation_guard(text, ground_truth, **pool_options):
    """Test-only per-item function: inside a worker, hands `text` straight to sympy's evaluators."""
    import sympy
    from sympy.parsing.sympy_parser import parse_expr

    from trl_math.grading.math_verify_sandbox import RefusedEvaluation

    outcomes = []
    for evaluate in (sympy.sympify, parse_expr):
        try:
            outcomes.append(str(evaluate(text)))
        except RefusedEvaluation:
            outcomes.append("refused")
    return {"format_reward": 1.0, "answer_reward": 0.0, "reward": 0.0, "outcomes": outcomes}


@needs_course_slow
def test_injection_attempts_have_no_side_effect(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    payloads = _payloads(marker, listener.getsockname()[1])
    truths = ["1", "0", "\\frac{1}{2}", payloads[0]]
    responses, gts = [], []
    for payload in payloads:
        for gt in truths:
            responses += [f"t </think> <answer> {payload} </answer>",
                          f"t </think> <answer> \\boxed{{{payload}}} </answer>"]
            gts += [gt, gt]
    env_before = dict(os.environ)
    with GradingPool(grade_fn=grade_and_inspect) as pool:
        results = pool.grade(responses, gts, fast=False)
        stats = dict(pool.stats)
    assert stats["timeouts"] == stats["errors"] == stats["memory_errors"] == 0, stats
    assert not any(r["env_changed"] or r["children"] for r in results)
    # math-verify reads the "1" in "1+__import__(...)" as the course does, and the course scores that 1
    one = responses.index(f"t </think> <answer> 1+{payloads[0]} </answer>")
    assert gts[one] == "1" and results[one]["answer_reward"] == 1.0
    # direct calls from this process, timed one by one
    for payload in payloads:
        t = time.perf_counter()
        r1_zero_reward_fn(f"t </think> <answer> {payload} </answer>", "1", fast=False)
        question_only_reward_fn(f"\\boxed{{{payload}}}", "1", fast=False)
        assert time.perf_counter() - t < 2 * (LIMIT_S + RESTART_S), payload
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()
    assert not marker.exists() and list(tmp_path.iterdir()) == []
    assert dict(os.environ) == env_before
    _no_math_verify_here()


@needs_course_slow
def test_only_arithmetic_reaches_python_evaluation_in_a_worker():
    """The guard math-verify's evaluator runs behind: text outside the arithmetic alphabet is refused."""
    texts = ["__import__('os').system('true')", "().__class__", "lambda: 1", "open('x')", "x + 1", "1 + 2*3"]
    with GradingPool(processes=1, grade_fn=probe_evaluation_guard) as pool:
        results = pool.grade(texts, ["0"] * len(texts))
    assert [r["outcomes"] for r in results] == [["refused", "refused"]] * 5 + [["7", "7"]]


@needs_data
@needs_course_slow
def test_pathological_rows_return_within_the_limit_and_the_worker_is_replaced():
    """Direct calls on one corpus row of each patho_* kind (10**10**10, (10**100)!, 3,000-deep parentheses,
    ...): each returns within the limit plus a worker restart; the next ordinary answer is graded."""
    from trl_math.grading import course_slow

    first_of_kind: dict[str, dict] = {}
    for row in _load("corpus.jsonl"):
        if row["kind"].startswith("patho_") and row["kind"] not in first_of_kind:
            first_of_kind[row["kind"]] = row
    assert len(first_of_kind) >= 40
    r1_zero_reward_fn("t </think> <answer> 1 </answer>", "2", fast=False)  # the helper worker is up
    before = dict(course_slow._helper.stats)
    worst = 0.0
    for row in first_of_kind.values():
        t = time.perf_counter()
        out = r1_zero_reward_fn(row["response"], row["ground_truth"], fast=False)
        worst = max(worst, time.perf_counter() - t)
        assert out["reward"] == out["answer_reward"] in (0.0, 1.0)
    stats = course_slow._helper.stats
    print(f"worst call {worst:.2f} s; helper stats before {before}, after {stats}")
    assert worst < LIMIT_S + RESTART_S
    assert stats["timeouts"] > before["timeouts"] and stats["restarts"] > before["restarts"]
    assert r1_zero_reward_fn("t </think> <answer> 0.5 </answer>", "\\frac{1}{2}", fast=False)["reward"] == 1.0
    _no_math_verify_here()


# ------------------------------------------------------------------ the limits


def hungry_grader(response, ground_truth, **pool_options):
    """Test-only per-item function: allocates 16 GiB for responses containing HUNGRY, in the worker itself or
    (HUNGRY_FORK) in the fresh process that runs the math-verify step."""
    from trl_math.grading.math_verify_sandbox import run_isolated

    if "HUNGRY_FORK" in response:
        run_isolated(lambda: bytearray(16 << 30))
    elif "HUNGRY" in response:
        bytearray(16 << 30)
    return r1_zero_reward_fn(response, ground_truth, fast=False)


@needs_course_slow
def test_a_worker_past_its_memory_limit_is_replaced_and_the_batch_graded():
    R = "t </think> <answer> {} </answer>".format
    responses = [R("0.5"), R("HUNGRY"), R("2"), R("HUNGRY_FORK"), R("3")] + [R("0.25")] * 6
    truths = ["\\frac{1}{2}", "1", "2", "1", "3"] + ["\\frac{1}{4}"] * 6
    with GradingPool(grade_fn=hungry_grader) as pool:
        results = pool.grade(responses, truths, fast=False)
        stats = dict(pool.stats)
    assert [r["answer_reward"] for r in results] == [1.0, 0.0, 1.0, 0.0, 1.0] + [1.0] * 6
    assert results[1]["unscored"] == results[3]["unscored"] == "memory"
    assert stats["memory_errors"] == 2 and stats["restarts"] == 2 and stats["timeouts"] == 0


@needs_data
@needs_course_slow
def test_a_worker_past_its_time_limit_is_replaced_and_the_batch_graded():
    rows = {r["id"]: r for r in _load("corpus.jsonl")}
    labels = [lab for lab in _load("dev_labels_fast_false.jsonl") if lab["status"] == "ok"][:30]
    slow = [r for r in rows.values() if r["kind"] == "patho_power_tower_py"][:2]  # past 5 s for the course
    batch = labels[:10] + [None] + labels[10:20] + [None] + labels[20:]
    slow_rows = iter(slow)
    items = [next(slow_rows) if lab is None else rows[lab["id"]] for lab in batch]
    with GradingPool() as pool:
        results = pool.grade([r["response"] for r in items], [r["ground_truth"] for r in items], fast=False)
        stats = dict(pool.stats)
    for lab, res in zip(batch, results):
        if lab is None:
            assert res["unscored"] == "timeout" and res["answer_reward"] == 0.0
        else:
            assert res["answer_reward"] == lab["answer_reward"] and "unscored" not in res, lab["id"]
    assert stats["timeouts"] == stats["restarts"] == 2


# ------------------------------------------------------------------ without the extra


def test_fast_false_without_the_extra_names_it(monkeypatch):
    import importlib.metadata

    real_version = importlib.metadata.version

    def version(dist):
        if dist == "math-verify":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real_version(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with GradingPool(processes=1) as pool:
        for call in (check_course_slow,
                     lambda: r1_zero_reward_fn("t </think> <answer> 7 </answer>", "8", fast=False),
                     lambda: TRLReward("answer", fast=False),
                     lambda: pool.grade(["t </think> <answer> 7 </answer>"], ["8"], fast=False)):
            with pytest.raises(CourseSlowUnavailable, match=r"pip install 'trl-math\[course-slow\]'"):
                call()
        assert pool.stats["items"] == 0
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda dist: "0.9.0" if dist == "math-verify" else real_version(dist))
    with pytest.raises(CourseSlowUnavailable, match=r"math-verify==0.7.0 .*found 0.9.0"):
        check_course_slow()
    # fast=True and the accurate mode never need it
    assert r1_zero_reward_fn("t </think> <answer> 8 </answer>", "8")["reward"] == 1.0
    assert r1_zero_reward_fn("t </think> <answer> 8 </answer>", "8", fast=False, mode="accurate")["reward"] == 1.0

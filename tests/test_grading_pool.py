"""GradingPool: results in order, identical to in-process grading, hard per-item time limit."""

from __future__ import annotations

import time

import pytest

from trl_math.grading import GradingPool, grade_batch, r1_zero_reward_fn


def sleepy_grader(response, ground_truth, prompt="r1_zero", mode="course", fast=True):
    """Test-only grading function: hangs on responses containing SLEEP."""
    if "SLEEP" in response:
        while True:  # a pure-Python hang no thread could interrupt
            time.sleep(0.01)
    return r1_zero_reward_fn(response, ground_truth, fast, mode=mode)


def crashing_grader(response, ground_truth, prompt="r1_zero", mode="course", fast=True):
    if "CRASH" in response:
        raise RuntimeError("grader bug")
    return r1_zero_reward_fn(response, ground_truth, fast, mode=mode)


def R(ans: str) -> str:
    return f"t </think> <answer> {ans} </answer>"


@pytest.fixture(scope="module")
def pool():
    with GradingPool(processes=2, timeout=1.0) as p:
        yield p


def test_pool_matches_in_process(pool):
    responses = [R(str(i)) for i in range(50)] + ["no format", R("The answer is 7")]
    truths = [str(i if i % 3 else i + 1) for i in range(50)] + ["1", "7"]
    for mode in ("course", "accurate"):
        got = pool.grade(responses, truths, mode=mode)
        want = [r1_zero_reward_fn(r, g, mode=mode) for r, g in zip(responses, truths)]
        assert got == want
    assert pool.grade([], []) == []
    with pytest.raises(ValueError):
        pool.grade(["a"], [])


def test_pool_kills_hung_items_and_counts_them():
    responses = [R("1"), R("SLEEP"), R("2"), R("SLEEP"), R("3")] + [R("4")] * 20
    truths = ["1", "1", "2", "2", "3"] + ["4"] * 20
    with GradingPool(processes=2, timeout=0.5, grade_fn=sleepy_grader) as p:
        t = time.perf_counter()
        res = p.grade(responses, truths)
        elapsed = time.perf_counter() - t
        assert [r["answer_reward"] for r in res] == [1.0, 0.0, 1.0, 0.0, 1.0] + [1.0] * 20
        assert res[1] == {"format_reward": 1.0, "answer_reward": 0.0, "reward": 0.0, "unscored": "timeout"}
        assert "unscored" not in res[0]
        assert p.stats["timeouts"] == 2 and p.stats["restarts"] == 2
        # two hung items, each cut at 0.5 s, plus worker restarts: far from "forever"
        assert elapsed < 8.0
        # the pool keeps working after replacing the killed workers
        assert [r["answer_reward"] for r in p.grade([R("9")], ["9"])] == [1.0]


def test_pool_counts_grader_errors_as_wrong():
    with GradingPool(processes=1, timeout=1.0, grade_fn=crashing_grader) as p:
        res = p.grade([R("CRASH"), R("5")], ["5", "5"])
        assert [r["answer_reward"] for r in res] == [0.0, 1.0] and res[0]["unscored"] == "error"
        assert p.stats["errors"] == 1 and p.stats["timeouts"] == 0


def test_grade_batch_one_shot():
    res, stats = grade_batch([R("1"), R("2")], ["1", "3"], processes=1)
    assert [r["answer_reward"] for r in res] == [1.0, 0.0]
    assert stats["items"] == 2 and stats["timeouts"] == 0


def test_workers_do_not_rerun_the_launching_script(tmp_path):
    """An unguarded script (no `if __name__ == "__main__"`) runs once: the workers never re-import it."""
    import subprocess
    import sys

    marker = tmp_path / "runs.txt"
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from pathlib import Path\n"
        f"with open({str(marker)!r}, 'a') as f:\n    f.write('ran\\n')\n"
        "from trl_math.grading import GradingPool\n"
        "pool = GradingPool(processes=2)\n"
        "print(pool.grade(['</think> <answer> 4 </answer>'], ['4'])[0]['reward'])\n"
        "pool.close()\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "1.0"
    assert marker.read_text() == "ran\n"


def slow_grader(response, ground_truth, prompt="r1_zero", mode="course", fast=True):
    """Test-only grading function: one second per item, so that a signal can arrive while items are graded."""
    time.sleep(1.0)
    return r1_zero_reward_fn(response, ground_truth, fast, mode=mode)


GRADE_THROUGH_A_SIGNAL = """
import json, signal, sys
from trl_math.grading import GradingPool
from test_grading_pool import R, slow_grader

signals = []
signal.signal(signal.SIGTERM, lambda *_: signals.append(1))  # what a preempted trainer does: record, go on
with GradingPool(processes=2, timeout=10.0, grade_fn=slow_grader) as pool:
    print("grading", flush=True)
    results = pool.grade([R("2"), R("3"), R("2"), R("5")], ["2", "2", "2", "2"])
    stats = dict(pool.stats)
print(json.dumps({"signals": len(signals), "results": results, "stats": stats}), flush=True)
"""


def test_workers_survive_a_sigterm_sent_to_the_whole_process_group(tmp_path):
    """torchrun passes a SIGTERM on to each rank's process group: the items being graded at that moment still get
    real grades (not "timeout"), and the parent, which records the signal, gets them all."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", GRADE_THROUGH_A_SIGNAL], env=env, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)  # its own process group, as a torchrun rank's
    assert process.stdout.readline().strip() == "grading"
    time.sleep(0.5)  # two items in flight, one second each
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    report = json.loads(output.strip().splitlines()[-1])
    assert report["signals"] == 1
    assert [r.get("unscored") for r in report["results"]] == [None] * 4
    assert [r["answer_reward"] for r in report["results"]] == [1.0, 0.0, 1.0, 0.0]
    assert report["stats"]["timeouts"] == 0 and report["stats"]["restarts"] == 0

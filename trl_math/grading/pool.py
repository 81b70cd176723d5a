"""Batch grading in worker processes with a hard per-item time limit.

Pure-Python work cannot be interrupted inside a thread, so the only hard bound on an
arbitrary grading function is a process: each worker grades one item at a time; the parent
waits on all workers at once and kills (then replaces) any worker whose item runs past
``timeout`` seconds.  That item counts as wrong (answer 0, format from the format rule), is
marked ``"unscored": "timeout"`` and is counted in ``stats["timeouts"]`` (a grader exception:
``"unscored": "error"``, ``stats["errors"]``).  Our graders are bounded by construction (size limits),
so timeouts should stay at zero; the pool is the guarantee for everything else.

Each worker also has a memory limit (RLIMIT_AS, ``memory_limit_mb`` beyond what it maps once started): an
item that runs past it scores 0, is marked ``"unscored": "memory"``, counted in ``stats["memory_errors"]``,
and its worker is replaced.  ``fast=False``'s math-verify step runs only here (``math_verify_sandbox``,
preloaded by the workers), one fresh process per answer.

Workers come from a ``forkserver`` by default (safe next to CUDA and threads, and cheap to
replace); the clock of an item starts when a ready worker receives it.

A signal sent to the parent's whole process group (torchrun passing a SIGTERM on to each rank's group, a
Ctrl-C) does not reach the workers: each runs in its own session, and the fork server starts with SIGTERM
blocked. The parent decides what a signal means (a preempted trainer finishes its validation's chunk with real
grades) and ends the workers itself: ``close``, or their pipe closing when it dies.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import resource
import signal
import sys
import threading
import time
import types
from collections import deque
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Sequence

from .course_slow import check_course_slow
from .extract import course_extract_answer, has_r1_zero_format
from .rewards import question_only_reward_fn, r1_zero_reward_fn

__all__ = ["GradingPool", "grade_item", "grade_batch", "in_grading_worker"]

# Set in the worker processes: the math-verify step runs in place there, and nowhere else.
_IN_GRADING_WORKER = False
# What an unscored item's reason is counted as in GradingPool.stats.
_STAT_OF = {"timeout": "timeouts", "error": "errors", "memory": "memory_errors"}


def in_grading_worker() -> bool:
    """Is this process a grading worker (where math-verify may run)?"""
    return _IN_GRADING_WORKER


def grade_item(response: str, ground_truth: Any, prompt: str = "r1_zero",
               mode: str = "course", fast: bool = True) -> dict[str, float]:
    """The default per-item grading function (module level: picklable)."""
    fn = r1_zero_reward_fn if prompt == "r1_zero" else question_only_reward_fn
    return fn(response, ground_truth, fast, mode=mode)


def _unscored_result(response: str, prompt: str, reason: str) -> dict:
    """The reward of an item the grader could not score (`reason`: "timeout", "error" or "memory"): answer 0,
    the format rule's format reward, and `unscored` saying why."""
    if prompt == "r1_zero":
        fmt = 1.0 if has_r1_zero_format(response) else 0.0
    else:
        fmt = 1.0 if course_extract_answer(response) is not None else 0.0
    return {"format_reward": fmt, "answer_reward": 0.0, "reward": 0.0, "unscored": reason}


def _failure(res: dict | None) -> str | None:
    """Why a worker's reply is no score: None (a score), "timeout" (no reply: the worker died), "error"
    (the grader raised) or "memory" (the worker ran past its memory limit)."""
    if res is None:
        return "timeout"
    if "error" in res:
        return "error"
    return "memory" if res.get("unscored") == "memory" else None


def _prepare_worker(memory_limit_mb: int | None) -> None:
    """Mark the process as a grading worker, load the math-verify step when installed, cap the address space:
    `memory_limit_mb` beyond what the worker maps once its imports are done (a CUDA build of torch alone maps
    gigabytes it never touches)."""
    global _IN_GRADING_WORKER
    _IN_GRADING_WORKER = True
    try:  # preloaded by the forkserver: free there; one import here under spawn
        from . import math_verify_sandbox  # noqa: F401
    except ImportError:  # not installed: fast=False is refused before any item reaches a worker
        pass
    if memory_limit_mb:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
        limit = mapped + (memory_limit_mb << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _worker(conn, grade_fn: Callable[..., dict], memory_limit_mb: int | None = None) -> None:
    os.setsid()  # out of the parent's process group: signals sent to that group do not reach the worker
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # blocked in the fork server (_shielded_from_sigterm)
    _prepare_worker(memory_limit_mb)
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        idx, args, kwargs = msg
        try:
            result = grade_fn(*args, **kwargs)
        except MemoryError:  # past the memory limit: this heap is not trusted again, the pool replaces us
            conn.send((idx, {"unscored": "memory"}))
            return
        except Exception as exc:  # a grader bug must not kill the batch: count it as wrong
            result = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send((idx, result))


@contextmanager
def _shielded_from_sigterm():
    """Start processes with SIGTERM blocked (a blocked signal mask is inherited through fork and exec): the fork
    server, started on the first worker's start, then outlives a SIGTERM sent to the parent's process group."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def _launching_script_hidden(grade_fn: Callable[..., dict]):
    """Start workers without re-importing the launching script.

    spawn and forkserver children import the parent's `__main__` by path: a script without a
    `__name__ == "__main__"` guard would run again in every worker, and any script's imports (trl,
    transformers) would slow every start. The script stays visible only when `grade_fn` itself lives
    in it, since the worker must then import it to unpickle the function.
    """
    if b"__main__" in pickle.dumps(grade_fn):
        yield
        return
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class GradingPool:
    """A pool of grading processes; ``grade`` returns results in input order.

    Args:
        processes: number of workers (default: 2).
        timeout: hard wall-clock limit per item, seconds (default 1.0).
        grade_fn: picklable ``fn(response, ground_truth, prompt=..., mode=..., fast=...)``
            returning a reward dict; default ``grade_item``.  Tests inject slow functions.
        start_method: multiprocessing start method (default "forkserver": workers fork from
            a clean server process that has imported the graders once, so replacing a
            killed worker takes milliseconds; "spawn" also works).
        startup_timeout: seconds a new worker may take to import the graders.
        memory_limit_mb: how far each worker's address space may grow past what it maps once started
            (RLIMIT_AS; default 4096 MiB); None: no limit.

    The per-item clock starts when the item is sent to a ready worker.
    """

    def __init__(self, processes: int = 2, timeout: float = 1.0,
                 grade_fn: Callable[..., dict] = grade_item, start_method: str = "forkserver",
                 startup_timeout: float = 120.0, memory_limit_mb: int | None = 4096):
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.processes = processes
        self.timeout = float(timeout)
        self.grade_fn = grade_fn
        self.memory_limit_mb = memory_limit_mb
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":  # a missing math-verify is an ImportError, which the forkserver skips
            self._ctx.set_forkserver_preload(["trl_math.grading", "trl_math.grading.math_verify_sandbox"])
        self.startup_timeout = float(startup_timeout)
        self._lock = threading.Lock()
        self._workers: list[list] = []  # [process, conn]
        self.stats = {"items": 0, "timeouts": 0, "errors": 0, "memory_errors": 0, "restarts": 0}
        for _ in range(processes):
            self._workers.append(self._start())

    def _start(self) -> list:
        parent, child = self._ctx.Pipe(duplex=True)
        p = self._ctx.Process(target=_worker, args=(child, self.grade_fn, self.memory_limit_mb), daemon=True)
        with _launching_script_hidden(self.grade_fn), _shielded_from_sigterm():
            p.start()
        child.close()
        if not parent.poll(self.startup_timeout):
            p.kill()
            raise RuntimeError("grading worker did not start")
        parent.recv()  # ("ready", None)
        return [p, parent]

    def _replace(self, i: int) -> None:
        p, conn = self._workers[i]
        p.kill()
        p.join(timeout=5)
        conn.close()
        self._workers[i] = self._start()
        self.stats["restarts"] += 1

    def grade(self, responses: Sequence[str], ground_truths: Sequence[Any], *,
              prompt: str = "r1_zero", mode: str = "course", fast: bool = True) -> list[dict]:
        """Grade pairs; an item past ``timeout`` seconds is answer 0 and counted."""
        if len(responses) != len(ground_truths):
            raise ValueError("responses and ground_truths differ in length")
        if not fast and mode == "course":
            check_course_slow()
        kwargs = {"prompt": prompt, "mode": mode, "fast": fast}
        with self._lock:
            return self._run([(r, g) for r, g in zip(responses, ground_truths)], kwargs, prompt)

    def _run(self, items: list[tuple], kwargs: dict, prompt: str) -> list[dict]:
        results: list[dict | None] = [None] * len(items)
        todo = deque(range(len(items)))
        busy: dict[int, tuple[int, float]] = {}  # worker -> (item, deadline)

        def dispatch(w: int) -> None:
            if todo:
                idx = todo.popleft()
                try:
                    self._workers[w][1].send((idx, items[idx], kwargs))
                except (BrokenPipeError, OSError):
                    todo.appendleft(idx)
                    self._replace(w)
                    return
                busy[w] = (idx, time.monotonic() + self.timeout)

        for w in range(len(self._workers)):
            dispatch(w)
        while busy:
            now = time.monotonic()
            next_deadline = min(d for _, d in busy.values())
            conns = {self._workers[w][1]: w for w in busy}
            ready = wait(list(conns), timeout=max(0.0, next_deadline - now))
            for conn in ready:
                w = conns[conn]
                try:
                    idx, res = conn.recv()
                except (EOFError, OSError):  # the worker died: count as a timeout
                    idx = busy[w][0]
                    res = None
                    self._replace(w)
                busy.pop(w, None)
                reason = _failure(res)
                if reason == "memory":  # the worker has exited
                    self._replace(w)
                if reason:
                    self.stats[_STAT_OF[reason]] += 1
                    res = _unscored_result(items[idx][0], prompt, reason)
                results[idx] = res
                dispatch(w)
            now = time.monotonic()
            for w, (idx, deadline) in list(busy.items()):
                if now >= deadline:
                    busy.pop(w)
                    self.stats["timeouts"] += 1
                    results[idx] = _unscored_result(items[idx][0], prompt, "timeout")
                    self._replace(w)
                    dispatch(w)
        self.stats["items"] += len(items)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for p, conn in self._workers:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p, conn in self._workers:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join()
            conn.close()
        self._workers = []

    def __enter__(self) -> "GradingPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # best effort
        try:
            if self._workers:
                self.close()
        except Exception:
            pass


def grade_batch(responses: Iterable[str], ground_truths: Iterable[Any], *, prompt: str = "r1_zero",
                mode: str = "course", fast: bool = True, processes: int = 2,
                timeout: float = 1.0) -> tuple[list[dict], dict]:
    """One-shot pool: ``(results, stats)``."""
    with GradingPool(processes=processes, timeout=timeout) as pool:
        res = pool.grade(list(responses), list(ground_truths), prompt=prompt, mode=mode, fast=fast)
        return res, dict(pool.stats)

"""Grader benchmark over ../shared/data/grader/corpus.jsonl.

Measures, for the course-compatible default mode and the accurate mode: calls/s in one process (every
row, pathological ones included) and through a ``GradingPool``, latency p50/p99/max, calls over 1 s and
pool timeouts; for ``fast=False`` (math-verify, which runs only in the pool's workers): calls/s through the
pool against the default mode's, the added worker time per answer that reaches the math-verify step,
timeouts and restarts.  Agreement of the default mode with the course's labels (dev_labels.jsonl) and of
fast=False with dev_labels_fast_false.jsonl; accurate-mode false-negative / false-positive rates against
dev_intended_labels.jsonl (ambiguous rows excluded).  Every disagreement is listed with its id.

    OMP_NUM_THREADS=1 python benchmarks/grader_bench.py [--processes 2] [--skip-pool]

Writes benchmarks/results/grader_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data" / "grader"
OUT = REPO / "benchmarks" / "results" / "grader_bench.json"

sys.path.insert(0, str(REPO))

from trl_math.grading import GradingPool, r1_zero_reward_fn  # noqa: E402
from trl_math.grading._caches import clear_caches  # noqa: E402


# Modes graded against the course grader's labels, and the label file (without .jsonl) of each.
COURSE_LABELS = {"default": "dev_labels", "fast_false": "dev_labels_fast_false"}

def load(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def answer_text(response: str) -> str:
    return response.rsplit("<answer>", 1)[-1][:120]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_single(rows: list[dict], **kw) -> tuple[dict, dict]:
    clear_caches()
    out, lat = {}, []
    t0 = time.perf_counter()
    for r in rows:
        t = time.perf_counter()
        out[r["id"]] = r1_zero_reward_fn(r["response"], r["ground_truth"], **kw)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    slowest = max(zip(lat, (r["id"] for r in rows)))
    stats = {
        "calls": len(rows), "seconds": round(total, 3), "calls_per_s": round(len(rows) / total, 1),
        "p50_ms": round(pct(lat, 0.5) * 1e3, 4), "p99_ms": round(pct(lat, 0.99) * 1e3, 3),
        "max_ms": round(slowest[0] * 1e3, 2), "max_id": slowest[1],
        "calls_over_1s": sum(x > 1.0 for x in lat), "timeouts": 0,
    }
    return out, stats


def run_pool(rows: list[dict], processes: int, **kw) -> tuple[dict, dict]:
    mode, fast = kw.get("mode", "course"), kw.get("fast", True)
    t_start = time.perf_counter()
    with GradingPool(processes=processes, timeout=1.0) as pool:
        startup = time.perf_counter() - t_start
        t0 = time.perf_counter()
        res = pool.grade([r["response"] for r in rows], [r["ground_truth"] for r in rows],
                         mode=mode, fast=fast)
        total = time.perf_counter() - t0
        stats = {"processes": processes, "calls": len(rows), "seconds": round(total, 3),
                 "calls_per_s": round(len(rows) / total, 1), "startup_s": round(startup, 2),
                 **{k: pool.stats[k] for k in ("timeouts", "errors", "memory_errors", "restarts")}}
    return {r["id"]: x for r, x in zip(rows, res)}, stats


def agreement(rows_by_id: dict, labels: list[dict], ours: dict) -> dict:
    fmt_ok = ans_ok = finished = 0
    disagreements, course_timeouts = [], []
    for lab in labels:
        o = ours[lab["id"]]
        fmt_ok += o["format_reward"] == lab["format_reward"]
        if lab["status"] != "ok":
            course_timeouts.append({"id": lab["id"], "ours": o["answer_reward"]})
            continue
        finished += 1
        if o["answer_reward"] == lab["answer_reward"] and o["format_reward"] == lab["format_reward"]:
            ans_ok += 1
            continue
        r = rows_by_id[lab["id"]]
        disagreements.append({
            "id": lab["id"], "kind": r["kind"], "answer": answer_text(r["response"]),
            "ground_truth": r["ground_truth"], "course": lab["answer_reward"],
            "ours": o["answer_reward"],
            "reason": f"course {lab['answer_reward']:.0f} vs ours {o['answer_reward']:.0f} "
                      f"(kind {r['kind']}" + (f", unscored: {o['unscored']})" if "unscored" in o else ")"),
        })
    return {
        "rows": len(labels), "format_agreement_pct": round(100 * fmt_ok / len(labels), 3),
        "finished_rows": finished, "answer_agreement_pct": round(100 * ans_ok / finished, 3),
        "disagreements": disagreements, "course_timeouts": course_timeouts,
    }


def intended(rows_by_id: dict, labels: list[dict], ours: dict) -> dict:
    fn, fp, n_correct, n_incorrect = [], [], 0, 0
    fmt_bad = 0
    for lab in labels:
        o = ours[lab["id"]]
        fmt_bad += (o["format_reward"] == 1.0) != lab["intended_format"]
        if lab["intended_answer"] == "ambiguous":
            continue
        r = rows_by_id[lab["id"]]
        item = {"id": lab["id"], "kind": lab["kind"], "answer": answer_text(r["response"]),
                "ground_truth": r["ground_truth"]}
        if lab["intended_answer"] == "correct" and lab["intended_format"]:
            n_correct += 1
            if o["answer_reward"] != 1.0:
                fn.append({**item, "reason": "right answer graded wrong"})
        elif lab["intended_answer"] == "incorrect":
            n_incorrect += 1
            if o["answer_reward"] == 1.0:
                fp.append({**item, "reason": "wrong answer graded right"})
    return {
        "correct_formatted_rows": n_correct, "incorrect_rows": n_incorrect,
        "false_negative_pct": round(100 * len(fn) / n_correct, 3),
        "false_positive_pct": round(100 * len(fp) / n_incorrect, 3),
        "format_disagreements": fmt_bad, "false_negatives": fn, "false_positives": fp,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--skip-pool", action="store_true")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"grader data not found at {DATA}")
    rows = load("corpus.jsonl")
    by_id = {r["id"]: r for r in rows}
    report: dict = {"corpus_rows": len(rows), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}

    for name, kw in (("default", {}), ("fast_false", {"fast": False}), ("accurate", {"mode": "accurate"})):
        if name == "fast_false":  # math-verify runs only in the workers: the pool is the one way to grade it
            if args.skip_pool:
                continue
            report[name] = {}
            # every row, then the rows that are not patho_* (no answer there runs into the time limit)
            for part, part_rows in (("pool", rows), ("pool_without_patho",
                                                     [r for r in rows if not r["kind"].startswith("patho_")])):
                part_ours, pstats = run_pool(part_rows, args.processes, **kw)
                fast = run_pool(part_rows, args.processes)[1]
                # answers that reach the math-verify step: formatted, and wrong under the fast checks
                reaching = sum(default_ours[r["id"]]["format_reward"] == 1
                               and default_ours[r["id"]]["answer_reward"] == 0 for r in part_rows)
                added = pstats["processes"] * (pstats["seconds"] - fast["seconds"]) / reaching
                pstats.update(fast_true_calls_per_s=fast["calls_per_s"], answers_reaching_math_verify=reaching,
                              added_worker_ms_per_such_answer=round(1e3 * added, 1))
                report[name][part] = pstats
                if part == "pool":
                    ours = part_ours  # graded against the course's labels below
                print(f"[fast_false] {part} x{pstats['processes']}, {len(part_rows)} rows: {pstats['calls_per_s']} "
                      f"calls/s against {fast['calls_per_s']} for fast=True; {reaching} answers reach math-verify, "
                      f"{pstats['added_worker_ms_per_such_answer']} ms of worker time each; timeouts "
                      f"{pstats['timeouts']}, restarts {pstats['restarts']}, errors {pstats['errors']}, "
                      f"memory errors {pstats['memory_errors']}")
        else:
            ours, stats = run_single(rows, **kw)
            report[name] = {"single_process": stats}
            print(f"[{name}] one process: {stats['calls_per_s']} calls/s, p50 {stats['p50_ms']} ms, "
                  f"p99 {stats['p99_ms']} ms, max {stats['max_ms']} ms ({stats['max_id']}), "
                  f"calls over 1 s: {stats['calls_over_1s']}")
            if name == "default":
                default_ours = ours
        if not args.skip_pool and name != "fast_false":
            pool_ours, pstats = run_pool(rows, args.processes, **kw)
            report[name]["pool"] = pstats
            same = sum(pool_ours[i] == ours[i] for i in ours)
            report[name]["pool"]["same_as_single_process"] = same
            print(f"[{name}] pool x{pstats['processes']}: {pstats['calls_per_s']} calls/s, "
                  f"timeouts {pstats['timeouts']}, errors {pstats['errors']}, "
                  f"identical results {same}/{len(ours)}")
        if name in COURSE_LABELS:  # the course grader's own labels for this mode
            labels = COURSE_LABELS[name]
            agr = agreement(by_id, load(f"{labels}.jsonl"), ours)
            report[name][f"vs_{labels}"] = agr
            print(f"[{name}] vs {labels}: format {agr['format_agreement_pct']}% of {agr['rows']}, "
                  f"answer {agr['answer_agreement_pct']}% of {agr['finished_rows']} finished rows, "
                  f"{len(agr['disagreements'])} disagreements")
        else:
            it = intended(by_id, load("dev_intended_labels.jsonl"), ours)
            report[name]["vs_dev_intended_labels"] = it
            print(f"[accurate] vs intended: FN {it['false_negative_pct']}% "
                  f"({len(it['false_negatives'])}/{it['correct_formatted_rows']}), "
                  f"FP {it['false_positive_pct']}% ({len(it['false_positives'])}/{it['incorrect_rows']}), "
                  f"format disagreements {it['format_disagreements']}")
            course = intended(by_id, load("dev_intended_labels.jsonl"),
                              {**{k: v for k, v in run_single(rows)[0].items()}})
            report["default"]["vs_dev_intended_labels"] = {
                k: course[k] for k in ("false_negative_pct", "false_positive_pct")}
            print(f"[default] vs intended (for comparison): FN {course['false_negative_pct']}%, "
                  f"FP {course['false_positive_pct']}%")
    for name in ("default", "fast_false"):
        key = "vs_dev_labels" if name == "default" else "vs_dev_labels_fast_false"
        for d in report.get(name, {}).get(key, {}).get("disagreements", []):
            print(f"  {name} disagreement {d['id']}: {d['reason']}: {d['answer']!r} vs {d['ground_truth']!r}")
    for d in report["accurate"]["vs_dev_intended_labels"]["false_negatives"]:
        print(f"  accurate FN {d['id']} ({d['kind']}): {d['answer']!r} vs {d['ground_truth']!r}")
    for d in report["accurate"]["vs_dev_intended_labels"]["false_positives"]:
        print(f"  accurate FP {d['id']} ({d['kind']}): {d['answer']!r} vs {d['ground_truth']!r}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()

"""Validation accuracy the assignment's way (math_baseline): sample one response per problem, grade it with
the course's reward, stream every record to disk, summarize.

`evaluate(sampler, reward_fn, prompts, ground_truths, output_dir)` is the loop every part of trl-math uses
(recipes/evaluate.py, the trainers' validation, the final full validation); `evaluate_vllm` is the
assignment's function on top of it, for a vLLM engine. Files in `output_dir`:

- `generations.jsonl`: one line per problem, written as soon as its chunk is graded: index, problem_id
  (when known), prompt, response, ground_truth, format_reward, answer_reward, reward, response_tokens,
  finish_reason ("stop": a stop string or EOS ended it; "length": max_tokens did), category and unscored
  (null, or "timeout" / "error" when the grader could not score it: answer 0). Each line is one os.write,
  so a killed run leaves only whole lines (a torn last line at worst, which a resume drops).
- `summary.json` (atomically, at the end): n, format / answer accuracy, mean reward and response length,
  the counts of each category and finish reason, grading timeouts and errors, plus `extra_summary`.
- `evaluation.json`: what produced the records (`fingerprint`: model, prompt, sampling, ... and a hash
  of the problems). With `resume=True`, a later call into the same directory grades only the problems
  missing from generations.jsonl and summarizes all of them; a different fingerprint is refused, naming
  the fields that differ.

Several processes: every process calls `evaluate` with the same problems and its own sampler; each samples
a share (`sampling.sample_sharded`), the main process grades and writes, and every process gets the summary.

`stream_evaluation` is that loop without the math grading: sampling in chunks, streaming records, resuming,
summarizing, with the records and the summary built by the caller (the supplement's zero-shot benchmarks,
`supplement.zero_shot`). It also times the generation (`Throughput`).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .files import JsonlWriter, drop_torn_tail, read_jsonl, write_json_atomic, write_jsonl_atomic
from .grading.reward_pool import CATEGORIES, RewardFn, category, grade, grading_pool
from .sampling import Completion, Sampler, VLLMSampler, sample_sharded

RECORDS_FILE = "generations.jsonl"
SUMMARY_FILE = "summary.json"
RUN_FILE = "evaluation.json"


class EvaluationMismatch(ValueError):
    """An output directory holds a partial evaluation of another run (another fingerprint)."""


@dataclass
class Throughput:
    """The generation wall time of one call: `examples` sampled in `seconds` (time spent in the sampler only:
    not loading, grading or writing; records kept by a resume are not counted)."""

    examples: int
    seconds: float

    def as_dict(self) -> dict:
        per_second = self.examples / self.seconds if self.seconds > 0 else None
        return {"examples": self.examples, "generation_seconds": self.seconds, "examples_per_second": per_second}


@dataclass
class EvaluationResult:
    """What an evaluation wrote: the summary, the per-problem records (main process only) and the two files;
    its generation throughput, and the wall time of the whole call (sampling, grading, writing)."""

    summary: dict
    records: list[dict]
    records_path: Path
    summary_path: Path
    throughput: Throughput | None = None
    seconds: float | None = None


def summarize(records: Sequence[dict]) -> dict:
    """n, format / answer accuracy, mean reward and response length, category, finish-reason and unscored counts:
    each a mean or count over the records, one per problem."""
    n = len(records)

    def mean(key):
        return sum(r[key] for r in records) / n if n else float("nan")

    counts = Counter(r["category"] for r in records)
    unscored = Counter(r["unscored"] for r in records if r.get("unscored"))
    return {
        "n": n,
        "format_accuracy": mean("format_reward"),
        "answer_accuracy": mean("answer_reward"),
        "mean_reward": mean("reward"),
        "mean_response_tokens": mean("response_tokens"),
        "categories": {name: counts.get(name, 0) for name in CATEGORIES.values()},
        "finish_reasons": dict(Counter(r["finish_reason"] for r in records)),
        "grading_timeouts": unscored.get("timeout", 0),
        "grading_errors": unscored.get("error", 0),
        "grading_memory_errors": unscored.get("memory", 0),
    }


def rows_hash(rows: Iterable) -> str:
    """A hash of JSON-serializable rows, in order: a changed data file changes it."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def problems_hash(prompts: Sequence[str], ground_truths: Sequence[str], problem_ids: Sequence | None) -> str:
    """A hash of the evaluated problems, in order: a changed data file changes it."""
    return rows_hash(zip(prompts, ground_truths, problem_ids if problem_ids is not None else [None] * len(prompts)))


def _changed_fields(saved: dict, current: dict) -> list[str]:
    return sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))


def _records_to_keep(output_dir: Path, run: dict, identities: Sequence[dict]) -> dict[int, dict]:
    """The records of a partial evaluation of the same run in `output_dir`, by index (none if there is none);
    record i must hold the fields of `identities[i]`.

    Refuses a directory whose records come from another run (another fingerprint, or no evaluation.json)."""
    records_path, run_path = output_dir / RECORDS_FILE, output_dir / RUN_FILE
    if not records_path.exists():
        return {}
    if not run_path.exists():
        raise EvaluationMismatch(f"{records_path} exists but {run_path} does not, so what produced it is unknown: use "
                                 "another output_dir, or start over (resume off)")
    saved = json.loads(run_path.read_text(encoding="utf-8"))
    changed = _changed_fields(saved, run)
    if changed:
        details = "; ".join(f"{key}: {saved.get(key)!r} -> {run.get(key)!r}" for key in changed)
        raise EvaluationMismatch(f"{output_dir} holds a partial evaluation of another run ({details}): use another "
                                 "output_dir, or start over (resume off)")
    drop_torn_tail(records_path)
    kept = {}
    for number, record in enumerate(read_jsonl(records_path), start=1):
        index = record.get("index")
        if not isinstance(index, int) or not 0 <= index < len(identities) \
                or any(record.get(key) != value for key, value in identities[index].items()):
            raise ValueError(f"{records_path}:{number}: record does not match problem {index!r} of this evaluation")
        kept[index] = record
    return kept


def evaluate(
    sampler: Sampler,
    reward_fn: RewardFn,
    prompts: Sequence[str],
    ground_truths: Sequence[str],
    output_dir: str | Path,
    *,
    problem_ids: Sequence | None = None,
    chunk_size: int = 512,
    extra_summary: dict | None = None,
    pool=None,
    resume: bool = False,
    fingerprint: dict | None = None,
    state=None,
    desc: str = "evaluate",
    safe_point: Callable[[], None] | None = None,
) -> EvaluationResult:
    """Sample one response per prompt, grade it with `reward_fn`, write the files (module doc); returns them.

    Prompts are sampled `chunk_size` at a time (request ids: their positions, so seeded samples do not depend
    on the chunking), and each chunk reaches the disk as soon as it is graded. `pool`: a
    `grading_pool(reward_fn)` to reuse (starting one takes seconds); None starts one for this call.
    `fingerprint`: what identifies this run for `resume` (e.g. model, prompt, sampling). `state`: an
    accelerate PartialState when several processes evaluate together (None: the current one). `safe_point`: see
    `stream_evaluation`.
    """
    if len(prompts) != len(ground_truths) or (problem_ids is not None and len(problem_ids) != len(prompts)):
        raise ValueError(f"got {len(prompts)} prompts, {len(ground_truths)} ground truths"
                         + ("" if problem_ids is None else f" and {len(problem_ids)} problem ids"))
    from accelerate import PartialState

    state = state or PartialState()
    own_pool = state.is_main_process and pool is None
    if own_pool:
        pool = grading_pool(reward_fn)

    def grade_chunk(indices: list[int], completions: list[Completion]) -> list[dict]:
        truths = [str(ground_truths[i]) for i in indices]
        rewards = grade(reward_fn, [c.text for c in completions], truths, pool)
        return [
            {
                "index": index,
                **({} if problem_ids is None else {"problem_id": problem_ids[index]}),
                "prompt": prompts[index],
                "response": completion.text,
                "ground_truth": truth,
                "format_reward": float(reward["format_reward"]),
                "answer_reward": float(reward["answer_reward"]),
                "reward": float(reward["reward"]),
                "response_tokens": completion.num_tokens,
                "finish_reason": completion.finish_reason,
                "category": category(reward["format_reward"], reward["answer_reward"]),
                "unscored": reward.get("unscored"),
            }
            for index, truth, completion, reward in zip(indices, truths, completions, rewards, strict=True)
        ]

    try:
        return stream_evaluation(
            sampler, prompts, output_dir, grade_chunk,
            lambda records, _throughput: {**summarize(records), **(extra_summary or {})},
            identities=[{"prompt": p, "ground_truth": str(t)} for p, t in zip(prompts, ground_truths)],
            run={**(fingerprint or {}), "problems": problems_hash(prompts, ground_truths, problem_ids)},
            chunk_size=chunk_size, resume=resume, state=state, desc=desc, unit="problem", safe_point=safe_point,
        )
    finally:
        if own_pool:
            pool.close()


def stream_evaluation(
    sampler: Sampler,
    prompts: Sequence[str],
    output_dir: str | Path,
    make_records: Callable[[list[int], list[Completion]], list[dict]],
    summarize_records: Callable[[list[dict], Throughput], dict],
    *,
    identities: Sequence[dict] | None = None,
    run: dict | None = None,
    chunk_size: int = 512,
    resume: bool = False,
    state=None,
    desc: str = "evaluate",
    unit: str = "example",
    safe_point: Callable[[], None] | None = None,
) -> EvaluationResult:
    """Sample one response per prompt, `chunk_size` prompts at a time, and stream the records that
    `make_records(indices, completions)` (main process) builds of each chunk to generations.jsonl; then write
    `summarize_records(all records, throughput)` to summary.json. Returns what was written.

    Each record must hold its "index" (its prompt's position) and the fields of `identities[index]` (default:
    {"prompt": the prompt}), which `resume` checks a kept record against. `run`: what produced the records
    (written to evaluation.json; default: a hash of the identities), whose change `resume` refuses. The
    throughput counts the prompts sampled by this call and the time spent in the sampler.

    `safe_point()`, when given, is called by every process before each chunk; it may raise to stop the evaluation
    there (a preempted run: trl_math.preemption), leaving whole records of the chunks done for a resume.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    started = time.perf_counter()
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    identities = [{"prompt": p} for p in prompts] if identities is None else list(identities)
    if len(identities) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts and {len(identities)} identities")
    state = state or PartialState()
    output_dir = Path(output_dir)
    main = state.is_main_process
    kept: dict[int, dict] = {}
    if main:
        run = run if run is not None else {"problems": rows_hash(identities)}
        kept = _records_to_keep(output_dir, run, identities) if resume else {}
        if kept:
            print(f"{desc}: resuming {output_dir}: {len(kept)} of {len(prompts)} {unit}s already graded",
                  file=sys.stderr)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / RUN_FILE, run)
        JsonlWriter(output_dir / RECORDS_FILE, append=bool(kept)).close()  # starts it empty, or keeps it
    missing = [i for i in range(len(prompts)) if i not in kept]
    if state.num_processes > 1:
        missing = broadcast_object_list([missing], from_process=0)[0]
    records, throughput = _sample_and_record(sampler, prompts, make_records, missing, output_dir, chunk_size, state,
                                             desc, unit, safe_point)
    summary = None
    if main:
        records = sorted([*kept.values(), *records], key=lambda r: r["index"])
        if kept:  # appended after the kept lines: leave the file in problem order
            write_jsonl_atomic(output_dir / RECORDS_FILE, records)
        summary = summarize_records(records, throughput)
        write_json_atomic(output_dir / SUMMARY_FILE, summary)
    if state.num_processes > 1:
        summary = broadcast_object_list([summary], from_process=0)[0]
    return EvaluationResult(summary, records if main else [], output_dir / RECORDS_FILE, output_dir / SUMMARY_FILE,
                            throughput, time.perf_counter() - started)


def _sample_and_record(sampler, prompts, make_records, indices, output_dir, chunk_size, state, desc,
                       unit, safe_point=None) -> tuple[list[dict], Throughput]:
    """Records of the prompts at `indices`, appended to generations.jsonl chunk by chunk (main process), and
    the time spent sampling them; `safe_point()` before each chunk."""
    main = state.is_main_process
    records: list[dict] = []
    seconds = 0.0
    writer = JsonlWriter(output_dir / RECORDS_FILE, append=True) if main else None
    try:
        with tqdm(total=len(indices), desc=desc, unit=unit, disable=not main) as bar:
            for start in range(0, len(indices), chunk_size):
                if safe_point is not None:
                    safe_point()
                chunk = indices[start : start + chunk_size]
                began = time.perf_counter()
                groups = sample_sharded(sampler, [prompts[i] for i in chunk], 1, chunk, state)
                seconds += time.perf_counter() - began
                if main:
                    for record in make_records(chunk, [group[0] for group in groups]):
                        writer.write(record)
                        records.append(record)
                bar.update(len(chunk))
    finally:
        if writer is not None:
            writer.close()
    return records, Throughput(len(indices), seconds)


def evaluate_vllm(
    vllm_model,
    reward_fn: RewardFn,
    prompts: Sequence[str],
    ground_truths: Sequence[str],
    eval_sampling_params,
    output_dir: str | Path,
    **options,
) -> EvaluationResult:
    """The assignment's evaluate_vllm: evaluate a `vllm.LLM` on `prompts` with `eval_sampling_params` (a
    `vllm.SamplingParams`; its seed, if any, seeds request r with seed + r), grade with `reward_fn`, write
    generations.jsonl and summary.json to `output_dir`. `options`: those of `evaluate` (chunk_size,
    extra_summary, pool, resume, fingerprint, problem_ids)."""
    return evaluate(VLLMSampler(vllm_model, eval_sampling_params), reward_fn, prompts, ground_truths, output_dir,
                    **options)

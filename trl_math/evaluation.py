"""Validation accuracy the assignment's way (math_baseline): generate, grade, stream every example to disk.

`evaluate_vllm` is the assignment's function: it samples one response per prompt from a vLLM engine,
grades it with the batch grader and writes, as it goes, one JSON line per example to
`<output_dir>/generations.jsonl`; at the end it writes `<output_dir>/summary.json` atomically.
`evaluate_transformers` does the same with `model.generate`, for machines without vLLM: the same
sampling fields (vLLM's names, `EvalSampling`), the same stop rule and the same files.

Each line: index, prompt, response, ground_truth, format_reward, answer_reward, reward,
response_tokens, finish_reason ("stop": the stop string or EOS ended it; "length": max_tokens did)
and category. The summary: n, format and answer accuracy, mean reward and response length, and the
count of each (format, answer) category, finish reasons, and how many items hit the grader's time limit
(graded answer 0). A run killed half-way leaves only whole lines: each line is written by one `os.write`
of the complete record.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList, StopStringCriteria

from .stopping import find_stop

RECORDS_FILE = "generations.jsonl"
SUMMARY_FILE = "summary.json"
# (format_reward, answer_reward) -> category; the r1_zero grader never gives (0, 1), question_only can't either.
CATEGORIES = {(1, 1): "format1_answer1", (1, 0): "format1_answer0", (0, 0): "format0_answer0", (0, 1): "format0_answer1"}

RewardFn = Callable[[str, str], dict[str, float]]


@dataclass
class EvalSampling:
    """How validation responses are sampled, under vLLM SamplingParams' field names (the assignment's defaults)."""

    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus-sampling top_p."})
    max_tokens: int = field(default=1024, metadata={"help": "Most tokens sampled per response."})
    min_tokens: int = field(default=4, metadata={"help": "Fewest tokens sampled per response (EOS and stop held back)."})
    stop: list[str] = field(
        default_factory=lambda: ["</answer>"], metadata={"help": "Responses end after the first of these strings."}
    )
    include_stop_str_in_output: bool = field(default=True, metadata={"help": "Keep the stop string in the response."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed. None: unseeded."})

    def to_vllm(self, n: int = 1):
        """The equivalent `vllm.SamplingParams`, `n` responses per prompt; imports vLLM."""
        from vllm import SamplingParams

        return SamplingParams(n=n, **asdict(self))


@dataclass
class Completion:
    """One sampled response: its text, its length in tokens (EOS included) and why it ended."""

    text: str
    num_tokens: int
    finish_reason: str


def generate_vllm(llm, prompts: Sequence[str], sampling_params) -> list[Completion]:
    """The completions of `llm.generate`, prompt-major: `sampling_params.n` per prompt, in prompt order."""
    outputs = llm.generate(list(prompts), sampling_params)
    return [Completion(c.text, len(c.token_ids), c.finish_reason) for o in outputs for c in o.outputs]


def completion_from_generated_ids(ids: list[int], tokenizer, sampling: EvalSampling, eos_ids: set[int]) -> Completion:
    """The vLLM view of one row of `generate` output (the tokens after the prompt, padded after the end).

    The row ends at the first EOS (kept in the count, as vLLM keeps it in token_ids) or at the first stop
    string that ends on or after token `min_tokens`, whose text is cut right after it (kept, as with
    include_stop_str_in_output=True); otherwise max_tokens ended it.
    """
    pad = tokenizer.pad_token_id
    end = next((i for i, t in enumerate(ids) if t in eos_ids or t == pad), len(ids))
    body = ids[:end]
    text = tokenizer.decode(body, skip_special_tokens=True)
    match = find_stop(body, tokenizer, sampling.stop or [], sampling.min_tokens)
    if match is not None:
        return Completion(text[: match.end if sampling.include_stop_str_in_output else match.start], match.tokens, "stop")
    if end < len(ids) and ids[end] in eos_ids:
        return Completion(text, end + 1, "stop")
    return Completion(text, len(body), "length")


@contextmanager
def seeded_rng(seed: int | None, device: torch.device):
    """Torch's RNG (CPU, and `device` if CUDA) seeded with `seed` inside, restored after; None: untouched."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class _StopAfterMinTokens(StoppingCriteria):
    """A stopping criterion that may only fire once sequences are `min_length` tokens long (vLLM's min_tokens
    also holds back stop strings; transformers' stop_strings ignore min_new_tokens)."""

    def __init__(self, inner: StoppingCriteria, min_length: int):
        self.inner, self.min_length = inner, min_length

    def __call__(self, input_ids, scores, **kwargs):
        done = self.inner(input_ids, scores, **kwargs)
        return done & (input_ids.shape[1] >= self.min_length)


def generate_transformers(
    model, tokenizer, prompts: Sequence[str], sampling: EvalSampling, batch_size: int = 16
) -> list[Completion]:
    """One completion per prompt from `model.generate`, batched with left padding, cut as vLLM would cut it.

    Prompts are tokenized without special tokens (as the trainers tokenize them). `sampling.seed`, when
    set, seeds a forked RNG (one stream for all prompts), so the caller's random state is left untouched.
    """
    eos = model.generation_config.eos_token_id
    eos_ids = {tokenizer.eos_token_id, *([eos] if isinstance(eos, int) else eos or [])} - {None}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = {
        "max_new_tokens": sampling.max_tokens,
        "min_new_tokens": sampling.min_tokens,
        "pad_token_id": pad_id,
        "do_sample": sampling.temperature > 0,
    }
    if sampling.temperature > 0:
        kwargs |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
    completions: list[Completion] = []
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with seeded_rng(sampling.seed, model.device), torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                batch = tokenizer(
                    list(prompts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False
                ).to(model.device)
                stopping = []
                if sampling.stop:
                    stopping.append(
                        _StopAfterMinTokens(
                            StopStringCriteria(tokenizer, list(sampling.stop)),
                            batch["input_ids"].shape[1] + sampling.min_tokens,
                        )
                    )
                output = model.generate(**batch, **kwargs, stopping_criteria=StoppingCriteriaList(stopping))
                for row in output[:, batch["input_ids"].shape[1] :].tolist():
                    completions.append(completion_from_generated_ids(row, tokenizer, sampling, eos_ids))
    finally:
        tokenizer.padding_side = padding_side
    return completions


class RewardGradeFn:
    """GradingPool's per-item function for an assignment-style `reward_fn(response, ground_truth)`.

    Picklable when `reward_fn` is (a module-level function or a functools.partial of one).
    """

    def __init__(self, reward_fn: RewardFn):
        self.reward_fn = reward_fn

    def __call__(self, response: str, ground_truth: str, **pool_options) -> dict[str, float]:
        return self.reward_fn(response, ground_truth)


def grading_pool(reward_fn: RewardFn):
    """A batch grader (worker processes, hard per-item time limit) that grades with `reward_fn`."""
    from .grading import GradingPool

    return GradingPool(grade_fn=RewardGradeFn(reward_fn))


def _format_rule(reward_fn: RewardFn) -> str:
    """Which format rule scores an item that timed out: question_only's for that reward, r1_zero's otherwise."""
    from .grading import question_only_reward_fn

    return "question_only" if reward_fn is question_only_reward_fn else "r1_zero"


def grade(reward_fn: RewardFn, responses: Sequence[str], ground_truths: Sequence[str], pool=None) -> list[dict]:
    """Rewards of (response, ground truth) pairs from the batch grader (`pool`, or a one-off pool).

    An item past the pool's time limit gets answer 0 and the format reward of the format rule.
    """
    if pool is None:
        with grading_pool(reward_fn) as own:
            return grade(reward_fn, responses, ground_truths, own)
    return pool.grade(list(responses), list(ground_truths), prompt=_format_rule(reward_fn))


def category(format_reward: float, answer_reward: float) -> str:
    """The math_baseline category of one graded response."""
    return CATEGORIES[(int(format_reward > 0), int(answer_reward > 0))]


class JsonlWriter:
    """Writes records as JSON lines, each with a single os.write of the whole line (no torn lines on a kill)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, record: dict) -> None:
        data = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        while data:
            data = data[os.write(self.fd, data) :]

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_json_atomic(path: str | Path, obj) -> None:
    """Write `obj` as JSON to `path` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def summarize(records: Sequence[dict]) -> dict:
    """n, format / answer accuracy, mean reward, mean response length, category and finish-reason counts."""
    n = len(records)

    def mean(key):
        return sum(r[key] for r in records) / n if n else float("nan")

    counts = Counter(r["category"] for r in records)
    return {
        "n": n,
        "format_accuracy": mean("format_reward"),
        "answer_accuracy": mean("answer_reward"),
        "mean_reward": mean("reward"),
        "mean_response_tokens": mean("response_tokens"),
        "categories": {name: counts.get(name, 0) for name in CATEGORIES.values()},
        "finish_reasons": dict(Counter(r["finish_reason"] for r in records)),
    }


@dataclass
class EvaluationResult:
    """What an evaluation wrote: the summary, the per-example records and the two files."""

    summary: dict
    records: list[dict]
    records_path: Path
    summary_path: Path


def _evaluate(
    generate_chunk: Callable[[Sequence[str]], list[Completion]],
    reward_fn: RewardFn,
    prompts: Sequence[str],
    ground_truths: Sequence[str],
    output_dir: str | Path,
    chunk_size: int,
    extra_summary: dict | None,
    pool,
) -> EvaluationResult:
    if len(prompts) != len(ground_truths):
        raise ValueError(f"got {len(prompts)} prompts but {len(ground_truths)} ground truths")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    output_dir = Path(output_dir)
    records: list[dict] = []
    if pool is None:
        with grading_pool(reward_fn) as own:
            return _evaluate(generate_chunk, reward_fn, prompts, ground_truths, output_dir, chunk_size, extra_summary, own)
    timeouts_before = pool.stats["timeouts"]
    with JsonlWriter(output_dir / RECORDS_FILE) as writer, tqdm(total=len(prompts), desc="evaluate", unit="ex") as bar:
        for start in range(0, len(prompts), chunk_size):
            chunk_prompts = list(prompts[start : start + chunk_size])
            chunk_truths = [str(t) for t in ground_truths[start : start + chunk_size]]
            completions = generate_chunk(chunk_prompts)
            rewards = grade(reward_fn, [c.text for c in completions], chunk_truths, pool)
            for offset, (prompt, truth, completion, reward) in enumerate(
                zip(chunk_prompts, chunk_truths, completions, rewards, strict=True)
            ):
                record = {
                    "index": start + offset,
                    "prompt": prompt,
                    "response": completion.text,
                    "ground_truth": truth,
                    "format_reward": float(reward["format_reward"]),
                    "answer_reward": float(reward["answer_reward"]),
                    "reward": float(reward["reward"]),
                    "response_tokens": completion.num_tokens,
                    "finish_reason": completion.finish_reason,
                    "category": category(reward["format_reward"], reward["answer_reward"]),
                }
                writer.write(record)
                records.append(record)
            bar.update(len(chunk_prompts))
    summary = {**summarize(records), "grading_timeouts": pool.stats["timeouts"] - timeouts_before, **(extra_summary or {})}
    write_json_atomic(output_dir / SUMMARY_FILE, summary)
    return EvaluationResult(summary, records, output_dir / RECORDS_FILE, output_dir / SUMMARY_FILE)


def evaluate_vllm(
    vllm_model,
    reward_fn: RewardFn,
    prompts: Sequence[str],
    ground_truths: Sequence[str],
    eval_sampling_params,
    output_dir: str | Path,
    chunk_size: int = 512,
    extra_summary: dict | None = None,
    pool=None,
) -> EvaluationResult:
    """Evaluate a vLLM engine on `prompts`: generate, grade, write generations.jsonl as it goes and summary.json.

    Prompts go to the engine `chunk_size` at a time, so finished examples reach the disk while the rest
    is generated. `extra_summary` (e.g. the model and the step) is merged into summary.json. `pool`: a
    `grading_pool(reward_fn)` to reuse (starting one takes seconds); None starts one for this call.
    """
    return _evaluate(
        lambda chunk: generate_vllm(vllm_model, chunk, eval_sampling_params),
        reward_fn, prompts, ground_truths, output_dir, chunk_size, extra_summary, pool,
    )


def evaluate_transformers(
    model,
    tokenizer,
    reward_fn: RewardFn,
    prompts: Sequence[str],
    ground_truths: Sequence[str],
    sampling: EvalSampling,
    output_dir: str | Path,
    batch_size: int = 16,
    extra_summary: dict | None = None,
    pool=None,
) -> EvaluationResult:
    """`evaluate_vllm` on `model.generate` (no vLLM needed): same sampling fields, stop rule and files.

    `sampling.seed` seeds one random stream for the whole evaluation: the responses are those of
    `generate_transformers` on all prompts at once.
    """
    unseeded = replace(sampling, seed=None)
    with seeded_rng(sampling.seed, model.device):
        return _evaluate(
            lambda chunk: generate_transformers(model, tokenizer, chunk, unseeded, batch_size),
            reward_fn, prompts, ground_truths, output_dir, batch_size, extra_summary, pool,
        )

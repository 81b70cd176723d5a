"""Zero-shot evaluation on the supplement's benchmarks: problems mmlu_baseline, gsm8k_baseline,
alpaca_eval_baseline, sst_baseline (section 2) and their re-evaluations mmlu_sft ... sst_sft (section 4).

Prompts. Each example becomes a benchmark text: MMLU's multiple-choice format (`MMLU_TEMPLATE`, the text's
wording; the subject with underscores as spaces), GSM8K's "{question}\\nAnswer:", and the raw instruction
for AlpacaEval and SimpleSafetyTests (the text: "no other prompting should be necessary"). The benchmark
text then fills the `{instruction}` of a prompt format:

- `zero_shot` (the baselines): the course's system prompt, zero_shot_system_prompt.prompt, whole (it ends
  with the opening "```" of the answer and a newline). The text uses this one system prompt on all tasks;
- `alpaca` (the *_sft re-evaluations): the Alpaca template the model was instruction-tuned on, up to its
  response (`alpaca.alpaca_prompt`), as section 4 asks ("the same instruction tuning prompt format").

Sampling (`ZeroShotSamplingConfig`): greedy (temperature 0.0, top-p 1.0, as the text sets), at most 1024
tokens, and the stop string "# Query:" (left out of the response): the text expects the model to answer,
close the code block and start the next turn with "# Query:", "when we see the string # Query: we can stop".
EOS also ends a response (the instruction-tuned model's documents end with it).

Scores. MMLU: `parse_mmlu_response` of the response against the answer letter; GSM8K: `parse_gsm8k_response`
(the last number) equal in value to the gold number. An `output`, the response as the judges see it, is kept
for AlpacaEval and SimpleSafetyTests: stripped of surrounding whitespace and, with the zero_shot format, of
the "```" that closes the prompt's code block (the last fence, when the response holds an odd number of them).

Files in `output_dir`: generations.jsonl (one record per example, streamed; `evaluation.stream_evaluation`,
which also resumes a killed run), summary.json (counts, accuracy, unparsed generations with the first ten
of them, per-subject figures for MMLU, finish reasons, throughput in examples/second of generation wall
time), evaluation.json (the fingerprint), and for the judges: alpaca_eval_outputs.json (the JSON array the
AlpacaEval evaluator reads: instruction, output, generator, dataset) or sst_outputs.jsonl (prompts_final and
output, with id, harm_area and category, for the course's scripts/evaluate_safety.py).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path

from ..data import packaged_prompt
from ..evaluation import EvaluationResult, Throughput, rows_hash, stream_evaluation
from ..files import write_json_atomic, write_jsonl_atomic
from ..sampler_arguments import SamplerArguments
from ..sampling import Completion, Sampler, SamplingConfig
from .alpaca import alpaca_prompt
from .benchmarks import BENCHMARKS, DEFAULT_DATA_PATHS, MMLU_SPLITS, load_benchmark
from .parsers import parse_gsm8k_response, parse_mmlu_response

PROMPT_FORMATS: tuple[str, ...] = ("zero_shot", "alpaca")
GRADED = ("mmlu", "gsm8k")
ALPACA_EVAL_FILE = "alpaca_eval_outputs.json"
SST_FILE = "sst_outputs.jsonl"
UNPARSED_EXAMPLES = 10  # unparsed generations quoted in the summary

MMLU_TEMPLATE = (
    "Answer the following multiple choice question about {subject}. Respond with a single sentence of the form "
    '"The correct answer is _", filling the blank with the letter corresponding to the correct answer (i.e., A, B, '
    "C or D).\n"
    "\n"
    "Question: {question}\n"
    "A. {options[0]}\n"
    "B. {options[1]}\n"
    "C. {options[2]}\n"
    "D. {options[3]}\n"
    "Answer:"
)
GSM8K_TEMPLATE = "{question}\nAnswer:"
_FENCE = "```"


@dataclass
class ZeroShotSamplingConfig(SamplingConfig):
    """SamplingConfig with the supplement's zero-shot settings as defaults (module doc)."""

    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature (the text: 0.0, greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus-sampling top_p (the text: 1.0)."})
    max_tokens: int = field(default=1024, metadata={"help": "Most tokens sampled per response."})
    min_tokens: int = field(
        default=0, metadata={"help": "Fewest tokens sampled per response (EOS and stop held back)."}
    )
    stop: list[str] = field(
        default_factory=lambda: ["# Query:"],
        metadata={"help": "Responses end at the first of these strings (the text: '# Query:', the next turn)."},
    )
    include_stop_str_in_output: bool = field(default=False, metadata={"help": "Keep the stop string in the response."})
    seed: int | None = field(default=0, metadata={"help": "Sampling seed (irrelevant when greedy)."})


@cache
def load_zero_shot_system_prompt() -> str:
    """The packaged zero_shot_system_prompt.prompt, whole: `{instruction}` inside, "```\\n" at the end."""
    return packaged_prompt("zero_shot_system_prompt")


def benchmark_text(benchmark: str, example: dict) -> str:
    """The text of one example that a prompt format wraps (module doc)."""
    if benchmark == "mmlu":
        return MMLU_TEMPLATE.format(subject=example["subject"].replace("_", " "), question=example["question"],
                                    options=example["options"])
    if benchmark == "gsm8k":
        return GSM8K_TEMPLATE.format(question=example["question"])
    if benchmark == "alpaca_eval":
        return example["instruction"]
    if benchmark == "sst":
        return example["prompts_final"]
    raise ValueError(f"benchmark: {benchmark!r} is not one of {BENCHMARKS}")


def format_prompt(text: str, prompt_format: str = "zero_shot") -> str:
    """`text` as the model sees it: inside the system prompt (zero_shot) or the Alpaca template (alpaca)."""
    if prompt_format == "zero_shot":
        return load_zero_shot_system_prompt().replace("{instruction}", text)
    if prompt_format == "alpaca":
        return alpaca_prompt(text)
    raise ValueError(f"prompt_format: {prompt_format!r} is not one of {PROMPT_FORMATS}")


def response_output(response: str, prompt_format: str = "zero_shot") -> str:
    """The answer a judge sees (module doc): the response stripped, less the fence closing the prompt's block."""
    output = response.strip()
    if prompt_format == "zero_shot" and output.endswith(_FENCE) and output.count(_FENCE) % 2 == 1:
        output = output[: -len(_FENCE)].rstrip()
    return output


def gsm8k_correct(prediction: str | None, answer: str) -> bool:
    """Whether a parsed GSM8K prediction equals the gold number in value ("18.0" is 18)."""
    return prediction is not None and Decimal(prediction) == Decimal(answer)


def score(benchmark: str, example: dict, response: str, prompt_format: str = "zero_shot") -> dict:
    """The fields a record adds to its response: prediction and correct (MMLU, GSM8K), or output."""
    if benchmark == "mmlu":
        prediction = parse_mmlu_response(example, response)
        return {"prediction": prediction, "correct": prediction == example["answer"]}
    if benchmark == "gsm8k":
        prediction = parse_gsm8k_response(response)
        return {"prediction": prediction, "correct": gsm8k_correct(prediction, example["answer"])}
    return {"output": response_output(response, prompt_format)}


def _counts(records: list[dict]) -> dict:
    n = len(records)
    correct = sum(r["correct"] for r in records)
    unparsed = sum(r["prediction"] is None for r in records)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else float("nan"), "unparsed": unparsed}


def summarize_zero_shot(benchmark: str, records: list[dict], throughput: Throughput) -> dict:
    """Figures of the records (module doc): one mean or count over them, plus this call's throughput."""
    n = len(records)
    summary = {"benchmark": benchmark}
    if benchmark in GRADED:
        summary |= _counts(records)
        summary["unparsed_examples"] = [{"index": r["index"], "response": r["response"]}
                                        for r in records if r["prediction"] is None][:UNPARSED_EXAMPLES]
        if benchmark == "mmlu":
            by_subject = defaultdict(list)
            for record in records:
                by_subject[record["subject"]].append(record)
            summary["subjects"] = {subject: _counts(by_subject[subject]) for subject in sorted(by_subject)}
    else:
        summary["n"] = n
    summary["mean_response_tokens"] = sum(r["response_tokens"] for r in records) / n if n else float("nan")
    summary["finish_reasons"] = dict(Counter(r["finish_reason"] for r in records))
    summary["throughput"] = throughput.as_dict()
    return summary


def write_judge_file(benchmark: str, records: list[dict], output_dir: str | Path, generator: str | None) -> Path | None:
    """The file a judge reads (module doc), written atomically; None for MMLU and GSM8K."""
    if benchmark == "alpaca_eval":
        path = Path(output_dir) / ALPACA_EVAL_FILE
        write_json_atomic(path, [{"instruction": r["instruction"], "output": r["output"], "generator": generator,
                                  "dataset": r["dataset"]} for r in records])
        return path
    if benchmark == "sst":
        path = Path(output_dir) / SST_FILE
        write_jsonl_atomic(path, [{"id": r["id"], "harm_area": r["harm_area"], "category": r["category"],
                                   "prompts_final": r["prompts_final"], "output": r["output"]} for r in records])
        return path
    return None


def evaluate_zero_shot(
    sampler: Sampler,
    benchmark: str,
    examples: list[dict],
    output_dir: str | Path,
    *,
    prompt_format: str = "zero_shot",
    generator: str | None = None,
    chunk_size: int = 512,
    resume: bool = False,
    fingerprint: dict | None = None,
    extra_summary: dict | None = None,
) -> EvaluationResult:
    """Sample one response per example of `benchmark` with `sampler`, score it, write the files (module doc);
    returns them (the summary also names the judge's file, `judge_file`, when there is one).

    `generator`: the AlpacaEval entries' generator (required for alpaca_eval). `fingerprint`: what identifies
    the run for `resume` (model, sampling, ...). `extra_summary`: added to the summary.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark: {benchmark!r} is not one of {BENCHMARKS}")
    if benchmark == "alpaca_eval" and not generator:
        raise ValueError("generator: required for AlpacaEval (the name the evaluator reports the outputs under)")
    prompts = [format_prompt(benchmark_text(benchmark, example), prompt_format) for example in examples]
    identities = [{**example, "prompt": prompt} for example, prompt in zip(examples, prompts)]

    def make_records(indices: list[int], completions: list[Completion]) -> list[dict]:
        return [
            {"index": index, **identities[index], "response": completion.text,
             **score(benchmark, examples[index], completion.text, prompt_format),
             "response_tokens": completion.num_tokens, "finish_reason": completion.finish_reason}
            for index, completion in zip(indices, completions, strict=True)
        ]

    judge_file = {"alpaca_eval": ALPACA_EVAL_FILE, "sst": SST_FILE}.get(benchmark)

    def summarize(records: list[dict], throughput: Throughput) -> dict:
        summary = summarize_zero_shot(benchmark, records, throughput)
        return {**summary, "judge_file": judge_file, **(extra_summary or {})}

    result = stream_evaluation(
        sampler, prompts, output_dir, make_records, summarize, identities=identities,
        run={**(fingerprint or {}), "problems": rows_hash(identities)}, chunk_size=chunk_size, resume=resume,
        desc=benchmark, unit="example",
    )
    write_judge_file(benchmark, result.records, output_dir, generator)
    return result


@dataclass
class ZeroShotArguments(SamplerArguments):
    """Benchmark, data, prompt format, outputs of a zero-shot evaluation; model and backend: SamplerArguments."""

    benchmark: str = field(default="mmlu", metadata={"help": f"Benchmark: one of {BENCHMARKS}."})
    data_path: str | None = field(
        default=None,
        metadata={"help": "The benchmark's data: MMLU's folder (holding dev/val/test), GSM8K's or AlpacaEval's JSONL "
                  "file, SimpleSafetyTests' CSV. None: the course's layout under data/."},
    )
    split: str = field(
        default="test", metadata={"help": f"MMLU split: one of {MMLU_SPLITS} (the test set by default)."}
    )
    limit: int | None = field(
        default=None, metadata={"help": "Evaluate a random sample of N examples, drawn with limit_seed. None: all."}
    )
    limit_seed: int = field(default=0, metadata={"help": "Seed of the limited sample."})
    prompt_format: str = field(
        default="zero_shot",
        metadata={"help": "'zero_shot': the course's system prompt (the baselines); 'alpaca': the instruction-tuning "
                  "template (the *_sft re-evaluations)."},
    )
    generator: str | None = field(
        default=None,
        metadata={"help": "AlpacaEval's generator name of the outputs. None: the model's folder name (last part of "
                  "its path or Hub id)."},
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the files go. None: outputs/zero_shot/<benchmark>-<prompt_format>."}
    )
    resume: bool = field(
        default=True,
        metadata={"help": "Continue a partial generations.jsonl in output_dir (only the missing examples are "
                  "sampled). False: start over."},
    )
    show_examples: int = field(
        default=0, metadata={"help": "Print this many random wrong (MMLU, GSM8K) or any (AlpacaEval, SST) examples."}
    )

    def __post_init__(self):
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark: {self.benchmark!r} is not one of {BENCHMARKS}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format: {self.prompt_format!r} is not one of {PROMPT_FORMATS}")
        if self.data_path is None:
            self.data_path = DEFAULT_DATA_PATHS[self.benchmark]
        if self.output_dir is None:
            self.output_dir = f"outputs/zero_shot/{self.benchmark}-{self.prompt_format}"
        if self.generator is None and self.model_name_or_path is not None:
            self.generator = Path(self.model_name_or_path.rstrip("/")).name


def run_zero_shot(args: ZeroShotArguments, sampling: SamplingConfig) -> EvaluationResult:
    """Evaluate as `args` and `sampling` say (recipes/zero_shot.py); returns the EvaluationResult."""
    backend = args.resolved_backend()
    examples = load_benchmark(args.benchmark, args.data_path, split=args.split, limit=args.limit,
                              limit_seed=args.limit_seed)
    run = {
        "benchmark": args.benchmark,
        "model": args.model_name_or_path,
        "data": args.data_path,
        **({"split": args.split} if args.benchmark == "mmlu" else {}),
        "prompt_format": args.prompt_format,
        "backend": backend,
        "sampling": asdict(sampling),
    }
    sampler = args.load_sampler(sampling)
    generator = {"generator": args.generator} if args.benchmark == "alpaca_eval" else {}
    return evaluate_zero_shot(sampler, args.benchmark, examples, args.output_dir, prompt_format=args.prompt_format,
                              generator=args.generator, chunk_size=args.chunk_size, resume=args.resume,
                              fingerprint=run, extra_summary={**run, **generator})

"""Zero-shot evaluation of a model on math problems: the math_baseline problem (CS336 Assignment 5, section 3).

    python recipes/evaluate.py --config recipes/configs/evaluate/math_baseline.yaml [--eval_limit 100 ...]

Writes <output_dir>/generations.jsonl (one line per example, as it goes) and <output_dir>/summary.json,
then prints the (format, answer) category table and, with --show_examples N, N examples of each.
Arguments: EvaluateArguments (data, model, backend, output) and EvalSampling (sampling); YAML via
--config, command-line flags override it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

from trl import TrlParser

from trl_math.data import PROMPT_NAMES, MathDataArguments
from trl_math.evaluation import CATEGORIES, EvalSampling, evaluate_transformers, evaluate_vllm

CATEGORY_LABELS = {
    "format1_answer1": "format 1, answer 1 (correct)",
    "format1_answer0": "format 1, answer 0",
    "format0_answer0": "format 0, answer 0",
    "format0_answer1": "format 0, answer 1",
}


@dataclass
class EvaluateArguments(MathDataArguments):
    """Problems (eval_source etc., see MathDataArguments), model, generation backend, outputs."""

    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate the first N valid problems. None: all."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Model: a local directory or a Hub id."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype: 'auto', 'bfloat16', 'float16' or 'float32'."})
    reward: str | None = field(
        default=None, metadata={"help": "Reward: 'r1_zero' or 'question_only'. None: the prompt's name."}
    )
    backend: str = field(
        default="auto",
        metadata={"help": "Generation: 'vllm', 'transformers', or 'auto' (vLLM when it is installed)."},
    )
    batch_size: int = field(
        default=16,
        metadata={"help": "Prompts per transformers generate() call; with vLLM, 32x this many per engine call."},
    )
    vllm_gpu_memory_utilization: float = field(default=0.85, metadata={"help": "GPU memory fraction vLLM may take."})
    vllm_max_model_length: int | None = field(default=None, metadata={"help": "vLLM context length. None: the model's."})
    output_dir: str = field(default="outputs/math_baseline", metadata={"help": "Where the two result files go."})
    show_examples: int = field(default=0, metadata={"help": "Print this many examples of each category."})


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def run(args: EvaluateArguments, sampling: EvalSampling):
    """Evaluate as `args` says; returns the EvaluationResult."""
    from trl_math.grading.registry import resolve_reward_fn

    reward = args.reward or args.prompt
    if reward not in PROMPT_NAMES:
        raise ValueError(f"reward: {reward!r} is not one of {PROMPT_NAMES} (set --reward with a custom prompt file)")
    for name in ("eval_source", "model_name_or_path"):
        if getattr(args, name) is None:
            raise ValueError(f"{name}: required")
    if args.backend not in ("auto", "vllm", "transformers"):
        raise ValueError(f"backend: {args.backend!r} is not 'auto', 'vllm' or 'transformers'")
    backend = args.backend if args.backend != "auto" else ("vllm" if _vllm_available() else "transformers")
    problems = args.load_problems("eval")
    reward_fn = resolve_reward_fn(reward)
    common = {
        "reward_fn": reward_fn,
        "prompts": problems["prompt"],
        "ground_truths": problems["ground_truth"],
        "output_dir": args.output_dir,
        "extra_summary": {
            "model": args.model_name_or_path,
            "source": args.eval_source,
            "prompt": args.prompt,
            "reward": reward,
            "backend": backend,
            "sampling": asdict(sampling),
        },
    }
    if backend == "vllm":
        from vllm import LLM

        llm = LLM(
            model=args.model_name_or_path,
            dtype=args.dtype,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            max_model_len=args.vllm_max_model_length,
            seed=sampling.seed or 0,
            enable_prefix_caching=True,
        )
        return evaluate_vllm(llm, eval_sampling_params=sampling.to_vllm(), chunk_size=32 * args.batch_size, **common)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    return evaluate_transformers(model, tokenizer, sampling=sampling, batch_size=args.batch_size, **common)


def report(result, show_examples: int = 0) -> str:
    """The category table (and `show_examples` examples of each category) as text."""
    summary = result.summary
    n = summary["n"]
    lines = [f"{'category':<30} {'count':>7} {'share':>7}"]
    for name in CATEGORIES.values():
        count = summary["categories"][name]
        if count or name != "format0_answer1":
            lines.append(f"{CATEGORY_LABELS[name]:<30} {count:>7} {count / n:>7.1%}")
    lines.append(
        f"n={n}  format accuracy {summary['format_accuracy']:.3f}  answer accuracy {summary['answer_accuracy']:.3f}  "
        f"mean response tokens {summary['mean_response_tokens']:.1f}  finish reasons {summary['finish_reasons']}"
    )
    if show_examples:
        by_category = defaultdict(list)
        for record in result.records:
            by_category[record["category"]].append(record)
        for name in CATEGORIES.values():
            for record in by_category[name][:show_examples]:
                lines += [
                    "",
                    f"--- {CATEGORY_LABELS[name]} (example {record['index']}, {record['finish_reason']}, "
                    f"{record['response_tokens']} tokens) ground truth: {record['ground_truth']!r}",
                    record["response"],
                ]
    lines.append(f"\nwrote {result.records_path} and {result.summary_path}")
    return "\n".join(lines)


def main(args: EvaluateArguments, sampling: EvalSampling):
    print(report(run(args, sampling), args.show_examples))


if __name__ == "__main__":
    main(*TrlParser((EvaluateArguments, EvalSampling)).parse_args_and_config())

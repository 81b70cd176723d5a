"""SFT examples in the assignment's format {prompt, response, ground_truth}: loading, selection, batching.

- `load_sft_examples` reads a local JSONL file (the course's sft.jsonl) or a Hub dataset; a bad row is an
  error naming the file, the line and the field.
- `select_sft_examples` keeps the examples whose response earns reward 1 (filter_correct), then draws a
  seeded subset of num_unique_examples (the dataset-size sweep), and says how many it kept.
- `SFTCollator` batches examples exactly as `tokenize_prompt_and_output` does (prompt and response
  tokenized separately, no special tokens, concatenated, right-padded), with the EOS token appended to
  each response by default so that the model learns to stop.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .data import iter_rows
from .logprobs import tokenize_prompt_and_output


@dataclass
class SFTDataArguments:
    """Where the SFT examples come from and which fields hold them."""

    sft_source: str | None = field(
        default=None,
        metadata={"help": "SFT examples: a local JSONL file ({prompt, response, ground_truth} rows) or a Hub dataset id."},
    )
    sft_split: str = field(default="train", metadata={"help": "Split to read when `sft_source` is a Hub dataset id."})
    prompt_field: str = field(default="prompt", metadata={"help": "Field holding the formatted (r1_zero) prompt."})
    response_field: str = field(default="response", metadata={"help": "Field holding the target response."})
    ground_truth_field: str = field(
        default="ground_truth", metadata={"help": "Field holding the reference answer (needed by filter_correct)."}
    )


def load_sft_examples(
    source: str | Path,
    split: str = "train",
    prompt_field: str = "prompt",
    response_field: str = "response",
    ground_truth_field: str = "ground_truth",
    require_ground_truth: bool = False,
):
    """SFT examples of `source` as a Dataset with columns prompt, response, ground_truth (None where absent)."""
    from datasets import Dataset

    rows, where = iter_rows(source, split)
    columns: dict[str, list] = {"prompt": [], "response": [], "ground_truth": []}
    for number, row in rows:
        if isinstance(row, str):
            raise ValueError(f"{where(number)}: {row}")
        for name in (prompt_field, response_field):
            if not isinstance(row.get(name), str) or not row[name]:
                raise ValueError(f"{where(number)}: field {name!r} is missing or not a non-empty string")
        truth = row.get(ground_truth_field)
        if truth is None or isinstance(truth, bool) or not isinstance(truth, (str, int, float)):
            if require_ground_truth:
                raise ValueError(f"{where(number)}: field {ground_truth_field!r} is missing or not a string or number")
            truth = None
        columns["prompt"].append(row[prompt_field])
        columns["response"].append(row[response_field])
        columns["ground_truth"].append(None if truth is None else str(truth))
    if not columns["prompt"]:
        raise ValueError(f"{source} holds no SFT examples")
    return Dataset.from_dict(columns)


def select_sft_examples(
    dataset, reward_fn, filter_correct: bool, num_unique_examples: int | None, seed: int, pool=None
):
    """(the selected examples, counts): the correct ones if `filter_correct`, then a seeded subset.

    The counts (`num_examples`, `num_correct` when filtering, `num_selected`) are printed and returned.
    `pool`: a batch grader to reuse (see evaluation.grading_pool); None starts one when filtering.
    """
    stats = {"num_examples": len(dataset)}
    if filter_correct:
        from .evaluation import grade

        truths = dataset["ground_truth"] if "ground_truth" in dataset.column_names else [None] * len(dataset)
        missing = [i for i, truth in enumerate(truths) if truth is None]
        if missing:
            raise ValueError(f"filter_correct: example {missing[0]} (0-based) has no ground_truth ({len(missing)} lack one)")
        rewards = grade(reward_fn, dataset["response"], [str(t) for t in truths], pool)
        dataset = dataset.select([i for i, reward in enumerate(rewards) if reward["reward"] == 1])
        stats["num_correct"] = len(dataset)
        if len(dataset) == 0:
            raise ValueError("filter_correct: no example's response earns reward 1; nothing left to train on")
    if num_unique_examples is not None:
        if num_unique_examples > len(dataset):
            raise ValueError(
                f"num_unique_examples: asked for {num_unique_examples} examples but only {len(dataset)} are available"
                + (" after filter_correct" if filter_correct else "")
            )
        dataset = dataset.shuffle(seed=seed).select(range(num_unique_examples)).flatten_indices()
    stats["num_selected"] = len(dataset)
    print(
        "SFT examples: "
        + (f"{stats['num_correct']} of {stats['num_examples']} earn reward 1 (filter_correct); " if filter_correct else "")
        + f"training on {stats['num_selected']} of {stats['num_examples']}",
        file=sys.stderr,
    )
    return dataset, stats


@dataclass
class SFTCollator:
    """Batches {prompt, response} examples with `tokenize_prompt_and_output`: input_ids, labels, response_mask.

    `append_eos` appends the tokenizer's EOS token to every response; `max_length` keeps the first
    max_length tokens of prompt + response.
    """

    tokenizer: object
    append_eos: bool = True
    max_length: int | None = None

    def __call__(self, examples: list[dict]) -> dict:
        suffix = self.tokenizer.eos_token if self.append_eos else ""
        if self.append_eos and suffix is None:
            raise ValueError("append_eos: the tokenizer has no EOS token")
        batch = tokenize_prompt_and_output(
            [e["prompt"] for e in examples], [e["response"] + suffix for e in examples], self.tokenizer
        )
        if self.max_length is not None:
            batch = {key: value[:, : self.max_length - 1] for key, value in batch.items()}
        return batch

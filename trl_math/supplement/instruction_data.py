"""Packed instruction-tuning data (problem data_loading): `PackedSFTDataset` and `iterate_batches`.

Each {prompt, response} example becomes an Alpaca document (`alpaca.encode_alpaca_documents`: the
tokenizer's BOS, the formatted text, EOS). The documents are concatenated, in file order or, with
`shuffle=True`, in a random order drawn with `seed`, into one token stream that is cut into consecutive,
non-overlapping chunks of `seq_length` tokens. Example i is

    input_ids = tokens[i*m : (i+1)*m],   labels = tokens[i*m+1 : (i+1)*m+1]   (m = seq_length)

so `labels` are the next tokens: a language-modelling loss compares logits[t] with labels[t], with no
further shift. A chunk whose labels would run past the stream is dropped, so there are (n - 1) // m
examples for n tokens, and the final, shorter chunk is never one of them.
"""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from .alpaca import encode_alpaca_documents
from ..data import iter_rows, row_strings

_ENCODE_BATCH = 1024  # documents tokenized per tokenizer call


@dataclass
class InstructionDataArguments:
    """Where the instruction-tuning examples come from, and how they are packed."""

    train_source: str | None = field(
        default=None,
        metadata={"help": "Training examples: a local JSONL or .jsonl.gz file of {prompt, response} rows, or a Hub "
                  "dataset id."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to read when `train_source` is a Hub dataset id."})
    eval_source: str | None = field(
        default=None,
        metadata={"help": "Validation examples (the course's test.jsonl.gz), packed like the training ones. None: no "
                  "validation."},
    )
    eval_split: str = field(default="test", metadata={"help": "Split to read when `eval_source` is a Hub dataset id."})
    prompt_field: str = field(default="prompt", metadata={"help": "Field holding the instruction."})
    response_field: str = field(default="response", metadata={"help": "Field holding the response."})
    seq_length: int = field(default=512, metadata={"help": "Tokens per packed sequence (the course: 512)."})
    shuffle_documents: bool = field(
        default=True,
        metadata={"help": "Shuffle the training documents before packing (seeded with `data_seed`, else `seed`). "
                  "Validation documents stay in file order."},
    )

    def load_packed(self, which: str, tokenizer, seed: int) -> PackedSFTDataset:
        """The packed training ('train') or validation ('eval') examples these arguments describe."""
        if which not in ("train", "eval"):
            raise ValueError(f"which must be 'train' or 'eval', got {which!r}")
        source = self.train_source if which == "train" else self.eval_source
        if source is None:
            raise ValueError(f"{which}_source: required")
        return PackedSFTDataset(
            tokenizer,
            source,
            self.seq_length,
            shuffle=self.shuffle_documents and which == "train",
            seed=seed,
            split=self.train_split if which == "train" else self.eval_split,
            prompt_field=self.prompt_field,
            response_field=self.response_field,
        )


def load_instruction_examples(
    source: str | Path, split: str = "train", prompt_field: str = "prompt", response_field: str = "response"
) -> list[tuple[str, str]]:
    """The (prompt, response) pairs of `source`, in order: a local JSONL or .jsonl.gz file, or a Hub dataset id.

    A row without both fields as strings is an error naming the file (or dataset), the line (or row) and the field.
    """
    rows, where = iter_rows(source, split)
    pairs = [row_strings(row, (prompt_field, response_field), where(number)) for number, row in rows]
    if not pairs:
        raise ValueError(f"{source} holds no instruction-tuning examples")
    return pairs


class PackedSFTDataset(torch.utils.data.Dataset):
    """The course's packed instruction-tuning Dataset (see the module doc): {input_ids, labels} of seq_length.

    `dataset_path`: a local JSONL or .jsonl.gz file of {prompt, response} rows (`prompt_field`, `response_field`),
    or a Hub dataset id read with `split`. `shuffle`: documents in a random order drawn with `seed`, 0 unless
    given, so that the course's four-argument call is reproducible. Indices run over range(len(self));
    negative ones count from the end, like a sequence's; any other raises IndexError, which also ends a plain
    `for example in dataset` loop after the last chunk.
    """

    def __init__(
        self,
        tokenizer,
        dataset_path: str | Path,
        seq_length: int,
        shuffle: bool,
        seed: int = 0,
        split: str = "train",
        prompt_field: str = "prompt",
        response_field: str = "response",
    ):
        if seq_length < 1:
            raise ValueError(f"seq_length must be >= 1, got {seq_length}")
        pairs = load_instruction_examples(dataset_path, split, prompt_field, response_field)
        if shuffle:
            random.Random(seed).shuffle(pairs)
        batches = (pairs[start : start + _ENCODE_BATCH] for start in range(0, len(pairs), _ENCODE_BATCH))
        pieces = [np.fromiter(chain.from_iterable(encode_alpaca_documents(tokenizer, batch)), np.int32) for batch in batches]
        self.tokens = torch.from_numpy(np.concatenate(pieces))  # int32: half the memory of int64
        self.seq_length = seq_length
        self.num_documents = len(pairs)
        if len(self) == 0:
            raise ValueError(
                f"{dataset_path}: {len(self.tokens)} tokens make no sequence of seq_length={seq_length} with its next tokens"
            )

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_length

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        position = operator.index(index)
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} packed sequences")
        start = position * self.seq_length
        return {
            "input_ids": self.tokens[start : start + self.seq_length].long(),
            "labels": self.tokens[start + 1 : start + self.seq_length + 1].long(),
        }


def get_packed_sft_dataset(tokenizer, dataset_path: str | Path, seq_length: int, shuffle: bool) -> PackedSFTDataset:
    """The course adapter's signature: `PackedSFTDataset(tokenizer, dataset_path, seq_length, shuffle)` (seed 0)."""
    return PackedSFTDataset(tokenizer, dataset_path, seq_length, shuffle)


def iterate_batches(dataset, batch_size: int, shuffle: bool, seed: int | None = None) -> torch.utils.data.DataLoader:
    """One epoch of `dataset` in batches of `batch_size` (stacked tensors; the last batch may be smaller).

    `shuffle` draws a new example order at each pass, from `seed` when given, else from torch's global RNG.
    """
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)

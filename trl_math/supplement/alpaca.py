"""The Alpaca template of the supplement, and how a {prompt, response} pair becomes a token document.

Instruction tuning and DPO see the same documents: the template with `{instruction}` and `{response}`
filled in, tokenized with the tokenizer's own special tokens (Llama 3 puts `<|begin_of_text|>` first),
then the EOS token (`<|end_of_text|>` for Llama 3), which delimits documents when they are packed and
teaches the model to stop. The template is the course's `alpaca_sft.prompt` without its final newline: the
course's expected token ids (tests/fixtures/tokenized_sft_sample.json of the course repository) have none.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from ..data import packaged_prompt

_RESPONSE = "{response}"
_INSTRUCTION = "{instruction}"


@cache
def load_alpaca_template() -> str:
    """The packaged alpaca_sft.prompt, less its final newline: `{instruction}` then `{response}` at the end."""
    return packaged_prompt("alpaca_sft").removesuffix("\n")


@cache
def _template_parts() -> tuple[str, str]:
    """(the template before {response}, after it)."""
    head, tail = load_alpaca_template().split(_RESPONSE)
    return head, tail


def alpaca_prompt(instruction: str) -> str:
    """The template up to its response: what the model is given (DPO's `prompt`)."""
    return _template_parts()[0].replace(_INSTRUCTION, instruction)


def format_alpaca(prompt: str, response: str) -> str:
    """One document's text: the template with `prompt` and `response` filled in (braces in them stay as they are)."""
    return alpaca_prompt(prompt) + response + _template_parts()[1]


def encode_alpaca_documents(tokenizer, pairs: Iterable[tuple[str, str]]) -> list[list[int]]:
    """Token ids of each (prompt, response) document: the tokenizer's special tokens around the formatted text
    (Llama 3: BOS first), then EOS, unless the tokenizer already ended the document with it."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"{type(tokenizer).__name__} has no EOS token: documents need one as their delimiter")
    encoded = tokenizer([format_alpaca(prompt, response) for prompt, response in pairs])["input_ids"]
    return [ids if ids and ids[-1] == eos else [*ids, eos] for ids in encoded]

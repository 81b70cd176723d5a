"""Where a generated completion ends under vLLM's stop-string rule, for token ids not cut by vLLM itself.

`find_stop` serves `sampling.completion_from_token_ids`, which every sampler and the GRPO trainer use to turn
generated ids into vLLM's completion: the fewest tokens whose decoded text holds an occurrence of a stop
string, skipping occurrences completed within the first `min_tokens` tokens (vLLM checks stop strings only
once more than min_tokens tokens are out, so a stop string must be completed by token min_tokens + 1 or later).
Text is decoded with skip_special_tokens=True, the text the graders see.
"""

from __future__ import annotations

from typing import NamedTuple


class StopMatch(NamedTuple):
    """The earliest qualifying stop: `tokens` leading tokens hold it; `start`/`end` are its character span in
    `tokenizer.decode(ids, skip_special_tokens=True)`."""

    tokens: int
    start: int
    end: int


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def _tokens_through(ids: list[int], tokenizer, stop: str, start: int) -> int:
    """Fewest leading tokens of `ids` whose text holds the occurrence of `stop` at character `start`."""
    low, high = 1, len(ids)
    while low < high:
        middle = (low + high) // 2
        if _decode(tokenizer, ids[:middle]).find(stop, start) >= 0:
            high = middle
        else:
            low = middle + 1
    return low


def find_stop(ids: list[int], tokenizer, stops: list[str], min_tokens: int = 0) -> StopMatch | None:
    """The stop among `stops` completed by the fewest tokens of `ids` (ties: the first in `stops`), counting
    only occurrences completed after the first `min_tokens` tokens; None when no stop string qualifies."""
    text = _decode(tokenizer, ids)
    best = None
    for stop in stops:
        position = text.find(stop)
        while position >= 0:
            tokens = _tokens_through(ids, tokenizer, stop, position)
            if tokens > min_tokens:
                if best is None or tokens < best.tokens:
                    best = StopMatch(tokens, position, position + len(stop))
                break
            position = text.find(stop, position + 1)
    return best

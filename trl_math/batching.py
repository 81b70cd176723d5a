"""Length-aware micro-batches: training compute on real tokens only, with the same optimizer update.

TRL pads a process's rollout batch once (prompts on the left to the longest prompt, completions on the right to
the longest completion of the batch), shuffles its rows and cuts them into micro-batches that keep that width.
Three levers (`Levers`) remove the padding; each leaves the update equal to the padded one up to float
reassociation (tests/test_batching.py checks it in float64 to a relative 1e-10):

- trim (`micro_batch`): a micro-batch is laid out row by row, prompt then completion from column 0, right-padded
  only to its own longest row. A causal LM's real tokens never attend to padding that comes after them, so no
  attention mask is needed. Rotary positions are each row's own, 0 at its first token as the sampling engine (vLLM)
  numbers them, in this layout and in TRL's left-padded one alike (`position_ids`): the positions, hence the float32
  rotary tables, are the same whatever the padding, and real tokens see exactly what they saw before.
- group (`plan_step`): the rows of one optimizer step on one process (`per_step` consecutive micro-batches of TRL's
  shuffled split) are sorted by length and cut again into micro-batches of the same size. The loss of a step is a
  sum over its rows divided by a constant (micro-batch size x micro-batches per step), so only the order of the sum
  changes. Which rows belong to which optimizer step stays TRL's, and so does the meaning of off-policy epochs
  (each epoch sees the same steps, in the same order).
- skip (`zero_gradient_rows`): a row whose loss gradient is exactly zero is not forwarded: its advantage is exactly
  0 (reinforce_with_baseline, grpo_clip, grpo_no_clip: every per-token loss is that advantage times something
  finite), its raw reward is exactly 0 (no_baseline), or it has no loss token. It adds an exact 0 to the step's sum,
  and the loss keeps the configured micro-batch size as its denominator, so the update is unchanged. Exact zeros
  only: a group of equal rewards such as 0.3 may get a tiny nonzero advantage from float round-off, and is kept.
  The kept rows fill the step's first micro-batches; the rest are empty. In a distributed run the trainer runs a
  zero-weighted forward and backward of `placeholder_micro_batch` for each, so that every process runs the same
  forwards and backwards: DDP's gradient all-reduce, and FSDP's and ZeRO-3's parameter gathers, see every process.
  A single plain process has nothing to join and runs nothing, except once in an optimizer step that forwards no
  row at all: its gradients are then zeros, not none, and the optimizer steps (momentum, step count) as it would
  on the padded rows.

SFT (`group_sft_micro_batches`): the assignment's SFT loss is a per-example sum divided by a constant, averaged over
equal micro-batches, so regrouping the rows of an optimizer step by length, each micro-batch cut to its longest
needed row, is exact when the step's micro-batches have equal sizes (an epoch's last, shorter one is left as is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# The keys of TRL's padded rollout rows that `micro_batch` turns into a forward's inputs.
_LAYOUT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")


@dataclass(frozen=True)
class Levers:
    """Which length-aware levers run (module doc). MathGRPOConfig.length_aware_batching turns all on or all off;
    benchmarks/grpo_padding.py measures them one by one."""

    trim: bool = True
    group: bool = True
    skip: bool = True

    @property
    def any(self) -> bool:
        return self.trim or self.group or self.skip


ALL = Levers()
NONE = Levers(trim=False, group=False, skip=False)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Rotary position of each column: 0 at the row's first real token, counting up (0 on the left padding).

    Real tokens are contiguous in both layouts (TRL's left-padded one and `micro_batch`'s right-padded one)."""
    columns = torch.arange(attention_mask.size(1), device=attention_mask.device)
    first = attention_mask.int().argmax(dim=1, keepdim=True)
    return (columns - first).clamp(min=0)


def _longest(lengths: torch.Tensor) -> int:
    return int(lengths.max()) if lengths.numel() else 0


def micro_batch(rows: dict, pad_token_id: int, trim: bool) -> dict:
    """A forward's inputs for `rows` in TRL's format (prompt_ids / prompt_mask left-padded, completion_ids /
    completion_mask right-padded; other per-row tensors ride along).

    Returns input_ids, attention_mask (None when trimmed: nothing to mask), position_ids, labels (-100 except the
    completion tokens), completion_start (each row's first completion column), and completion_ids /
    completion_mask and every completion-aligned tensor (old log-probs, tool mask...) cut to the micro-batch's
    longest completion. Untrimmed: TRL's layout and widths, positions from 0 at each row's first token.
    """
    prompt_ids, prompt_mask = rows["prompt_ids"], rows["prompt_mask"]
    completion_ids, completion_mask = rows["completion_ids"], rows["completion_mask"]
    prompt_width, completion_width = prompt_ids.size(1), completion_ids.size(1)
    prompt_lengths = prompt_mask.sum(dim=1)
    completion_lengths = completion_mask.sum(dim=1)
    full_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    full_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    if trim:
        width = max(1, _longest(prompt_lengths + completion_lengths))
        columns = torch.arange(width, device=full_ids.device).unsqueeze(0)
        starts = prompt_lengths.unsqueeze(1)
        source = torch.where(columns < starts, prompt_width - starts + columns, prompt_width + columns - starts)
        real = columns < starts + completion_lengths.unsqueeze(1)
        input_ids = full_ids.gather(1, source.clamp(max=full_ids.size(1) - 1)).masked_fill(~real, pad_token_id)
        attention_mask, completion_start = None, prompt_lengths
        kept = max(1, _longest(completion_lengths))
        positions = position_ids(real)
    else:
        input_ids, attention_mask, kept = full_ids, full_mask, completion_width
        completion_start = torch.full_like(prompt_lengths, prompt_width)
        columns = torch.arange(full_ids.size(1), device=full_ids.device).unsqueeze(0)
        positions = position_ids(full_mask)
    starts = completion_start.unsqueeze(1)
    is_completion = (columns >= starts) & (columns < starts + completion_lengths.unsqueeze(1))
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": positions,
        "labels": input_ids.masked_fill(~is_completion, -100),
        "completion_start": completion_start,
    }
    for key, value in rows.items():
        if key in _LAYOUT_KEYS[:2]:
            continue
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.size(1) == completion_width:
            value = value[:, :kept]  # completion-aligned: completion_ids, completion_mask, old log-probs, tool_mask...
        batch[key] = value
    return batch


def completion_values(per_position: torch.Tensor, batch: dict) -> torch.Tensor:
    """(rows, completion width) values of the completion tokens, from a fused LM head's per-position output
    (rows, width - 1), whose column j belongs to the token in column j + 1. Columns past a row's end read 0."""
    width = batch["completion_ids"].size(1)
    index = batch["completion_start"].unsqueeze(1) - 1 + torch.arange(width, device=per_position.device)
    return torch.nn.functional.pad(per_position, (0, width)).gather(1, index)


def placeholder_micro_batch(pad_token_id: int, device) -> dict:
    """One row (a pad-token prompt and completion) whose zero-weighted forward and backward stand in for an empty
    micro-batch, so that the process joins the collectives of a forward and backward (module doc)."""
    ids = torch.full((1, 1), pad_token_id, device=device)
    ones = torch.ones_like(ids)
    return micro_batch({"prompt_ids": ids, "prompt_mask": ones, "completion_ids": ids, "completion_mask": ones},
                       pad_token_id, trim=True)


def zero_gradient_rows(loss_type: str, rows: dict) -> torch.Tensor:
    """True for each row whose policy-gradient loss has an exactly zero gradient (module doc, skip)."""
    weight = rows["raw_rewards"] if loss_type == "no_baseline" else rows["advantages"]
    loss_mask = rows["completion_mask"] if "tool_mask" not in rows else rows["completion_mask"] * rows["tool_mask"]
    return (weight == 0) | (loss_mask.sum(dim=1) == 0)


def plan_step(lengths: torch.Tensor, keep: torch.Tensor, size: int, count: int, group: bool) -> list[torch.Tensor]:
    """Row indices of each of the `count` micro-batches of one optimizer step, whose rows have `lengths`.

    Rows with `keep` False are left out. Grouped: the kept rows, longest first, in micro-batches of `size`, then
    empty ones; otherwise each micro-batch keeps its rows (rows i*size ... (i+1)*size - 1) in their order."""
    indices = torch.arange(len(lengths), device=lengths.device)
    if group:
        kept = indices[keep]
        order = kept[torch.sort(lengths[kept], descending=True, stable=True).indices]
        chunks = list(order.split(size))
    else:
        chunks = [chunk[keep[chunk]] for chunk in indices.split(size)]
    return chunks + [indices[:0]] * (count - len(chunks))


def _select(rows: dict, index: torch.Tensor) -> dict:
    return {k: v[index] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in rows.items()}


def _concat(parts: list[dict]) -> dict:
    return {k: torch.cat([p[k] for p in parts]) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
            for k, v in parts[0].items()}


def length_aware_micro_batches(
    micro_batches: list[dict],
    per_step: int,
    levers: Levers,
    pad_token_id: int,
    skippable: Callable[[dict], torch.Tensor] | None = None,
) -> list[dict]:
    """TRL's micro-batches of one rollout batch on one process (`per_step` consecutive ones make an optimizer step;
    all cut from the same padded tensors) as the levers lay them out: the same count, and every micro-batch of a
    step holds rows of that step only. `skippable(rows)` marks the rows the skip lever leaves out."""
    if len(micro_batches) % per_step:
        raise ValueError(f"{len(micro_batches)} micro-batches do not make whole optimizer steps of {per_step}")
    size = micro_batches[0]["completion_ids"].size(0)
    planned = []
    for first in range(0, len(micro_batches), per_step):
        rows = _concat(micro_batches[first : first + per_step])
        lengths = rows["prompt_mask"].sum(dim=1) + rows["completion_mask"].sum(dim=1)
        keep = ~skippable(rows) if levers.skip and skippable is not None else torch.ones_like(lengths, dtype=torch.bool)
        for index in plan_step(lengths, keep, size, per_step, levers.group):
            planned.append(micro_batch(_select(rows, index), pad_token_id, levers.trim))
    return planned


def group_sft_micro_batches(batches: list[dict], pad_token_id: int) -> list[dict]:
    """The SFT micro-batches of one optimizer step (SFTCollator's input_ids, labels, response_mask, right-padded),
    regrouped by length: the rows sorted by their needed length (up to their last response token; later positions
    change nothing in a causal LM), cut into micro-batches of the same size, each as wide as its longest row.
    Micro-batches of unequal sizes are returned as they are (their rows do not weigh the same: module doc)."""
    sizes = {batch["input_ids"].size(0) for batch in batches}
    if len(batches) < 2 or len(sizes) != 1:
        return batches
    width = max(batch["input_ids"].size(1) for batch in batches)

    def widened(key: str) -> torch.Tensor:
        parts = []
        for batch in batches:
            value = batch[key]
            fill = pad_token_id if value.dtype != torch.bool else False
            part = value.new_full((value.size(0), width), fill)
            part[:, : value.size(1)] = value
            parts.append(part)
        return torch.cat(parts)

    rows = {key: widened(key) for key in batches[0]}
    response = rows["response_mask"]
    columns = torch.arange(1, width + 1, device=response.device)
    needed = (response * columns).max(dim=1).values  # 1 + the last response position; 0 without one
    order = torch.sort(needed, descending=True, stable=True).indices
    grouped = []
    for index in order.split(sizes.pop()):
        cut = max(1, int(needed[index].max()))
        grouped.append({key: value[index, :cut] for key, value in rows.items()})
    return grouped

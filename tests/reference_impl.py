"""An obviously-correct reference for the assignment's functions: explicit loops, float64, no tricks.

The stored fixtures under tests/fixtures/ are generated from this file
(`python tests/fixtures/regenerate.py`), and the library is tested against the stored numbers.
It is deliberately written differently from trl_math (element loops instead of vectorised masks,
log_softmax instead of gather-minus-logsumexp) so that a shared mistake is unlikely.
"""

from __future__ import annotations

import math

import torch


def masked_sum_over(tensor, mask, dim):
    t, m = tensor.double(), mask.double()
    if dim is None:
        total = 0.0
        for value, keep in zip(t.flatten().tolist(), m.flatten().tolist()):
            total += value * keep
        return torch.tensor(total, dtype=torch.float64), torch.tensor(float(m.sum()), dtype=torch.float64)
    moved_t = t.movedim(dim, -1)
    moved_m = m.movedim(dim, -1)
    sums = torch.zeros(moved_t.shape[:-1], dtype=torch.float64)
    counts = torch.zeros(moved_t.shape[:-1], dtype=torch.float64)
    for index in torch.cartesian_prod(*[torch.arange(s) for s in moved_t.shape[:-1]]).reshape(-1, moved_t.dim() - 1):
        idx = tuple(index.tolist())
        for j in range(moved_t.shape[-1]):
            sums[idx] += moved_t[idx + (j,)] * moved_m[idx + (j,)]
            counts[idx] += moved_m[idx + (j,)]
    return sums, counts


def masked_normalize(tensor, mask, normalize_constant, dim=None):
    sums, _ = masked_sum_over(tensor, mask, dim)
    return sums / normalize_constant


def masked_mean(tensor, mask, dim=None):
    sums, counts = masked_sum_over(tensor, mask, dim)
    return sums / counts


def entropy(logits):
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def label_log_probs(logits, labels):
    return torch.log_softmax(logits.double(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def group_normalized(rewards: list[float], group_size: int, eps: float, normalize_by_std: bool) -> list[float]:
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = sum(group) / len(group)
        var = sum((r - mean) ** 2 for r in group) / (len(group) - 1)
        for r in group:
            out.append((r - mean) / (math.sqrt(var) + eps) if normalize_by_std else r - mean)
    return out


def per_token_pg_loss(loss_type, logp, raw_rewards=None, advantages=None, old_logp=None, cliprange=None):
    """The per-token loss, element by element, in float64."""
    batch, seq = logp.shape
    out = torch.zeros(batch, seq, dtype=torch.float64)
    clipped = torch.zeros(batch, seq, dtype=torch.bool)
    for i in range(batch):
        for t in range(seq):
            lp = logp[i, t].double()
            if loss_type == "no_baseline":
                out[i, t] = -raw_rewards[i, 0].double() * lp
            elif loss_type == "reinforce_with_baseline":
                out[i, t] = -advantages[i, 0].double() * lp
            else:
                a = advantages[i, 0].double()
                ratio = torch.exp(lp - old_logp[i, t].double())
                if loss_type == "grpo_no_clip":
                    out[i, t] = -ratio * a
                else:
                    lhs = ratio * a
                    rhs = min(max(ratio, 1 - cliprange), 1 + cliprange) * a
                    out[i, t] = -min(lhs, rhs)
                    clipped[i, t] = bool(rhs < lhs)
    return out, clipped


def sft_step_loss(logp, mask, gradient_accumulation_steps, normalize_constant):
    per_example = masked_normalize(logp, mask, normalize_constant, dim=-1)
    return -per_example.mean() / gradient_accumulation_steps


def grpo_step_loss(per_token_loss, mask, gradient_accumulation_steps, length_normalization, normalize_constant):
    if length_normalization == "masked_mean":
        per_example = masked_mean(per_token_loss, mask, dim=-1)
    else:
        per_example = masked_normalize(per_token_loss, mask, normalize_constant, dim=-1)
    return per_example.mean() / gradient_accumulation_steps


def tokenize(prompts, outputs, tokenizer):
    seqs, masks = [], []
    for prompt, output in zip(prompts, outputs):
        p = tokenizer.encode(prompt, add_special_tokens=False)
        o = tokenizer.encode(output, add_special_tokens=False)
        seqs.append(p + o)
        masks.append([False] * len(p) + [True] * len(o))
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = [s + [pad] * (width - len(s)) for s in seqs]
    mask = [m + [False] * (width - len(m)) for m in masks]
    return {
        "input_ids": torch.tensor([row[:-1] for row in ids]),
        "labels": torch.tensor([row[1:] for row in ids]),
        "response_mask": torch.tensor([row[1:] for row in mask]),
    }

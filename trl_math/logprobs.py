"""Tokenization of (prompt, output) pairs and per-token log-probs / entropy of a causal LM.

Memory matters here: with Qwen's 151,936-token vocabulary a (batch, 1024, vocab) float32 logits
tensor is 0.6 GB per sequence. `get_response_log_probs` never materialises a second full-size
copy: log-probs are the gathered label logit minus a logsumexp computed over bounded chunks, and
entropy is computed chunk by chunk as well.
"""

from __future__ import annotations

import torch

# Elements of one temporary chunk of logits (2**24 float32 = 64 MiB), whatever the vocabulary.
_CHUNK_ELEMENTS = 2**24


def tokenize_prompt_and_output(prompt_strs: list[str], output_strs: list[str], tokenizer) -> dict[str, torch.Tensor]:
    """Tokenize prompts and outputs separately (no special tokens), concatenate and right-pad.

    Returns `input_ids` (the sequence without its last token), `labels` (without its first token)
    and `response_mask` (True where the label is an output token), each of shape
    (batch, max(prompt_len + output_len) - 1).
    """
    if len(prompt_strs) != len(output_strs):
        raise ValueError(f"got {len(prompt_strs)} prompts but {len(output_strs)} outputs")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
    prompt_ids = tokenizer(list(prompt_strs), add_special_tokens=False)["input_ids"]
    output_ids = tokenizer(list(output_strs), add_special_tokens=False)["input_ids"]
    full_len = max(len(p) + len(o) for p, o in zip(prompt_ids, output_ids))
    batch = len(prompt_ids)
    ids = torch.full((batch, full_len), pad_id, dtype=torch.long)
    is_output = torch.zeros((batch, full_len), dtype=torch.bool)
    for i, (p, o) in enumerate(zip(prompt_ids, output_ids)):
        ids[i, : len(p) + len(o)] = torch.tensor(p + o, dtype=torch.long)
        is_output[i, len(p) : len(p) + len(o)] = True
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "response_mask": is_output[:, 1:]}


def _row_chunks(flat: torch.Tensor):
    """Slices of a (rows, vocab) tensor holding at most _CHUNK_ELEMENTS elements each."""
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // flat.shape[-1])
    for start in range(0, flat.shape[0], rows_per_chunk):
        yield slice(start, start + rows_per_chunk)


def compute_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution: (..., vocab) logits -> (...) entropies.

    H = logsumexp(z) - sum softmax(z) * z, over bounded chunks of positions, in float32 at least
    (float64 logits stay float64; half-precision logits give float32 entropies).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=dtype, device=logits.device)
    for rows in _row_chunks(flat):
        z = flat[rows].to(dtype)
        out[rows] = torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(dim=-1)
    return out.reshape(logits.shape[:-1])


class _LabelLogProbs(torch.autograd.Function):
    """log softmax(logits)[label] with chunked forward and backward.

    Forward keeps only the logsumexp per position; backward writes d/dlogits = onehot - softmax
    chunk by chunk into one gradient buffer. Autograd through slices would allocate a full-size zero
    gradient per chunk instead. Chunks are computed in float32 at least, whatever the logits' dtype.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        flat = logits.reshape(-1, logits.shape[-1])
        flat_labels = labels.reshape(-1, 1)
        out = torch.empty(flat.shape[0], dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        for rows in _row_chunks(flat):
            z = flat[rows].to(dtype)
            lse[rows] = torch.logsumexp(z, dim=-1)
            out[rows] = z.gather(-1, flat_labels[rows]).squeeze(-1) - lse[rows]
        ctx.save_for_backward(logits, labels, lse)
        return out.reshape(labels.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        logits, labels, lse = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        flat_labels = labels.reshape(-1, 1)
        g = grad_out.reshape(-1, 1).to(lse.dtype)
        grad = torch.empty_like(flat)
        for rows in _row_chunks(flat):
            chunk = -torch.exp(flat[rows].to(lse.dtype) - lse[rows, None]) * g[rows]
            chunk.scatter_add_(-1, flat_labels[rows], g[rows])
            grad[rows] = chunk.to(grad.dtype)
        return grad.reshape(logits.shape), None


def _label_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] without a full-size log_softmax copy (differentiable)."""
    return _LabelLogProbs.apply(logits, labels)


def get_response_log_probs(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    return_token_entropy: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-token log p(label | prefix) from `model(input_ids).logits`, optionally with token entropy.

    "log_probs" keeps the autograd graph (it is what the losses differentiate); "token_entropy" is a
    monitoring quantity and is computed without gradient.
    """
    logits = model(input_ids).logits
    out = {"log_probs": _label_log_probs(logits, labels)}
    if return_token_entropy:
        with torch.no_grad():
            out["token_entropy"] = compute_entropy(logits.detach())
    return out

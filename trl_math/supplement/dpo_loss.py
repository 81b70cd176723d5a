"""compute_per_instance_dpo_loss (problem dpo_loss): the DPO loss of one preference pair, as the course defines it.

Each response makes an Alpaca document with the prompt (`alpaca.encode_alpaca_documents`: the tokenizer's
special tokens, the formatted text, EOS after the response), scored whole:

    log pi(x + y) = sum over t >= 1 of log pi(token_t | tokens_<t)
    loss = -log sigmoid(beta * [(log pi_theta(x+y_w) - log pi_ref(x+y_w)) - (log pi_theta(x+y_l) - log pi_ref(x+y_l))])

The prompt's tokens open both documents, so their terms cancel within each model's chosen-minus-rejected
difference, which is therefore that of the responses' conditional log-probabilities; scoring whole sequences
also stays exact where tokenization merges across the prompt/response boundary.

The reference model may live on another device than the policy (the course's 2-GPU layout): each model
scores the documents on the device of its own input embeddings, the reference without gradient, and its
log-probabilities move to the policy's device and dtype, where the loss is computed and returned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .alpaca import encode_alpaca_documents


def sequence_log_probs(model, sequences: list[list[int]]) -> torch.Tensor:
    """Per sequence, the sum over its tokens after the first of log pi(token | tokens before it): shape
    (len(sequences),), float32 or wider, on the device of `model`'s input embeddings."""
    device = model.get_input_embeddings().weight.device
    lengths = torch.tensor([len(ids) for ids in sequences], device=device)
    input_ids = torch.zeros(len(sequences), int(lengths.max()), dtype=torch.long, device=device)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, device=device)
    positions = torch.arange(input_ids.size(1), device=device)
    attention_mask = (positions < lengths[:, None]).long()
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    token_log_probs = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_log_probs * attention_mask[:, 1:]).sum(dim=-1)


def compute_per_instance_dpo_loss(
    lm, lm_ref, tokenizer, beta: float, prompt: str, response_chosen: str, response_rejected: str
) -> torch.Tensor:
    """The DPO loss of one pair (see the module doc): a scalar on `lm`'s device, differentiable in `lm` only."""
    sequences = encode_alpaca_documents(tokenizer, [(prompt, response_chosen), (prompt, response_rejected)])
    policy = sequence_log_probs(lm, sequences)
    with torch.no_grad():
        reference = sequence_log_probs(lm_ref, sequences).to(policy)
    chosen_ratio, rejected_ratio = policy - reference
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))

"""A real Qwen2 checkpoint whose answers are known: a bigram model built by hand, so that zero-shot tests see
parsed, unparsed, correct and wrong answers, stop strings, EOS and max_tokens from a real sampler.

Every answer phrase is one added token. The model's layers add nothing (o_proj and down_proj are zero), so
the logits depend on the last token only, through its "state" (a one-hot embedding) and an untied lm_head:

- the last token of a prompt, in either prompt format ("```\\n" of the system prompt, ":\\n" of the Alpaca
  template): any of the phrases, with the given weights (temperature 1.0 samples them; greedy takes the first);
- a phrase: FENCE_QUERY ("\\n```\\n\\n# Query:", the close of the code block and the next turn: the stop
  string), except STOP_AT_EOS (then EOS) and LOOP (itself again: max_tokens ends it);
- anything else: EOS.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

FENCE_QUERY = "\n```\n\n# Query:"
STOP_AT_EOS = "I cannot tell."
LOOP = "Hmm, "
PHRASES = (
    "The correct answer is A.",
    "The correct answer is B.",
    "The correct answer is C.",
    "The correct answer is D.",
    "She makes 18 dollars.",
    "The profit is $70,000.",
    "It is 5.",
    STOP_AT_EOS,
    LOOP,
)
PROMPT_ENDS = ("# Answer:\n```\n", "### Response:\n")  # the ends of the two prompt formats
_DEFAULT, _START, _PHRASE, _EOS_NEXT, _LOOP = range(5)


def save_scripted_checkpoint(path: str | Path, weights: dict[str, float] | None = None, hidden_size: int = 64) -> Path:
    """Save the model (module doc) and its tokenizer to `path`; `weights`: relative odds of the phrases after a
    prompt (default: all equal). hidden_size 64 with 2 heads gives head_dim 32, which vLLM's CPU build needs."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from trl_math.tiny_models import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer()
    tokenizer.add_tokens([*PHRASES, FENCE_QUERY])
    ids = {text: tokenizer.convert_tokens_to_ids(text) for text in (*PHRASES, FENCE_QUERY)}
    prompt_ends = {tokenizer(end)["input_ids"][-1] for end in PROMPT_ENDS}
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    state = torch.full((len(tokenizer),), _DEFAULT)
    state[list(prompt_ends)] = _START
    for phrase in PHRASES:
        state[ids[phrase]] = _PHRASE
    state[ids[STOP_AT_EOS]], state[ids[FENCE_QUERY]], state[ids[LOOP]] = _EOS_NEXT, _EOS_NEXT, _LOOP
    logits = torch.full((hidden_size, len(tokenizer)), -100.0)  # next-token logits of each state
    logits[[_DEFAULT, _EOS_NEXT], tokenizer.eos_token_id] = 0.0
    logits[_PHRASE, ids[FENCE_QUERY]] = 0.0
    logits[_LOOP, ids[LOOP]] = 0.0
    for phrase in PHRASES:
        logits[_START, ids[phrase]] = math.log((weights or {}).get(phrase, 1.0))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.nn.functional.one_hot(state, hidden_size).float())
        model.model.norm.weight.fill_(1.0)
        # the final RMSNorm turns a one-hot embedding into sqrt(hidden_size) times it
        model.lm_head.weight.copy_(logits.T / math.sqrt(hidden_size))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=None)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

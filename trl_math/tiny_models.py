"""Seeded tiny Qwen2 causal LMs and a locally trained BPE tokenizer, built offline in seconds.

Tests, benchmarks and the CPU demo need a real `from_pretrained` checkpoint without touching the
Hub. The tokenizer uses Qwen's own pre-tokenization (digit-by-digit split, then byte-level), so a
checkpoint saved with a Qwen2 config reloads through AutoTokenizer with identical tokenization.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

# Qwen2's pre-tokenization regex (from its tokenizer.json): one digit per token, words, punctuation.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
EOS_TOKEN = "<|endoftext|>"

_DEFAULT_CORPUS = [
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
    "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
    "here </answer>.\nUser: What is 37+48?\nAssistant: <think> 37+48=85 </think> <answer> 85 </answer>",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May? 48/2 = 24, 48+24 = 72. #### 72",
    r"Find $x$ such that \frac{1}{2} + \sqrt{3} = x^2. The answer is \boxed{\frac{3}{4}} or $\pi$ \le 10.",
]


def train_bpe_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 512):
    """A byte-level BPE with Qwen's pre-tokenization; `<|endoftext|>` is EOS and PAD.

    The r1_zero tags stay ordinary (non-special) tokens: TRL decodes completions with special
    tokens skipped, and special tags would vanish from the text the graders see.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts) if texts is not None else _DEFAULT_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)


def build_tiny_qwen2(
    tokenizer,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    tie_word_embeddings: bool = True,
):
    """A randomly initialised Qwen2ForCausalLM sized to `tokenizer`, deterministic for a given seed."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model


def save_tiny_checkpoint(path: str | Path, texts: Iterable[str] | None = None, vocab_size: int = 512, **model_kwargs) -> Path:
    """Train a tokenizer, build a tiny model and save both to `path` for `from_pretrained`."""
    path = Path(path)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    model = build_tiny_qwen2(tokenizer, **model_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

"""benchmarks/grpo_padding.py on one GPU: the same five trainers on the same scripted real-length rollouts, with a
Qwen2.5-1.5B-shaped Qwen2 (random weights built on the GPU in bf16, nothing downloaded) at the real lengths
(--scale 1: completions up to 1,024 tokens), reporting training-phase step time, real tokens per training second
and peak GPU memory per trainer. Sized to finish in under 8 minutes on one H100 (2 rounds x 5 trainers x 4 steps
of 64 rollouts). Writes benchmarks/results/grpo_padding_gpu.json.

    python benchmarks/grpo_padding_gpu.py [--rounds 2 --steps 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_padding import ROOT, main  # noqa: E402


def qwen25_math_1_5b_shape(tokenizer, args):
    """Qwen2.5-Math-1.5B's architecture (its config.json's sizes), random weights, bf16, built on the GPU."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if args.gpu else "cpu"):
        return Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        raise SystemExit("grpo_padding_gpu.py needs a GPU; benchmarks/grpo_padding.py is the CPU version")
    main(make_model=qwen25_math_1_5b_shape, defaults={
        "gpu": True, "scale": 1.0, "rounds": 2, "steps": 3,
        "output": ROOT / "benchmarks" / "results" / "grpo_padding_gpu.json",
    })

"""The offline test assets: tiny checkpoints reload faithfully, and the network is closed."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import NetworkAccessError
from trl_math.tiny_models import build_tiny_qwen2, save_tiny_checkpoint, train_bpe_tokenizer

TEXT = "Assistant: <think> 37+48=85 </think> <answer> 85 </answer>\n\n  \\frac{1}{2}"


def test_network_is_closed_to_tests():
    with pytest.raises(NetworkAccessError):
        urllib.request.urlopen("https://huggingface.co", timeout=5)
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("8.8.8.8", 53), timeout=5)


def test_loopback_stays_open_for_multi_process_tests():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    client.close()
    server.close()


def test_saved_checkpoint_reloads_with_identical_tokenizer_and_weights(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "ckpt", seed=3)
    tokenizer = AutoTokenizer.from_pretrained(path)
    original = train_bpe_tokenizer()
    assert tokenizer(TEXT)["input_ids"] == original(TEXT)["input_ids"]
    assert tokenizer.decode(tokenizer(TEXT)["input_ids"]) == TEXT
    # Qwen pre-tokenization: one token per digit
    digits = tokenizer("12345", add_special_tokens=False)["input_ids"]
    assert len(digits) == 5
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rebuilt = build_tiny_qwen2(original, seed=3)
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), name
    assert model.config.vocab_size == len(tokenizer)


def test_seeds_give_distinct_models_and_leave_global_rng_alone():
    tokenizer = train_bpe_tokenizer()
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = build_tiny_qwen2(tokenizer, seed=1)
    after = torch.rand(1)
    b = build_tiny_qwen2(tokenizer, seed=2)
    assert torch.equal(before, after)
    assert not torch.equal(a.lm_head.weight, b.lm_head.weight)


def test_tiny_model_generates_offline(tiny_model, tiny_tokenizer):
    ids = tiny_tokenizer("What is 2+2?", return_tensors="pt")
    out = tiny_model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5 or tiny_tokenizer.eos_token_id in out[0]

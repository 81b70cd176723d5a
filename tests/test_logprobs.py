"""Tokenization, log-probs and entropy against the stored reference fixtures."""

from __future__ import annotations

import pytest
import torch

import trl_math
import trl_math.logprobs as logprobs_module
from conftest import FIXTURES_DIR


@pytest.fixture(scope="module")
def cases():
    return torch.load(FIXTURES_DIR / "reference_cases.pt", weights_only=False)


def test_tokenize_prompt_and_output_on_a_qwen_tokenizer(cases, qwen_tokenizer):
    c = cases["tokenization"]
    out = trl_math.tokenize_prompt_and_output(c["prompts"], c["outputs"], qwen_tokenizer)
    for key in ("input_ids", "labels", "response_mask"):
        assert torch.equal(out[key], c["expected"][key]), key
    lengths = [
        len(qwen_tokenizer.encode(p, add_special_tokens=False)) + len(qwen_tokenizer.encode(o, add_special_tokens=False))
        for p, o in zip(c["prompts"], c["outputs"])
    ]
    assert out["input_ids"].shape == (3, max(lengths) - 1)
    # the response tokens of the labels decode back to each output
    for row, output in enumerate(c["outputs"]):
        assert qwen_tokenizer.decode(out["labels"][row][out["response_mask"][row]]) == output


def test_tokenize_rejects_mismatched_lengths(qwen_tokenizer):
    with pytest.raises(ValueError, match="2 prompts but 1 outputs"):
        trl_math.tokenize_prompt_and_output(["a", "b"], ["c"], qwen_tokenizer)


@pytest.fixture(scope="module")
def seeded_model(cases):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = cases["model"]
    model = Qwen2ForCausalLM(Qwen2Config(**c["config"])).eval()
    model.load_state_dict(c["state_dict"])
    return model


def test_get_response_log_probs_on_a_seeded_tiny_model(cases, seeded_model):
    c = cases["model"]
    with torch.no_grad():
        out = trl_math.get_response_log_probs(seeded_model, c["input_ids"], c["labels"], return_token_entropy=True)
    torch.testing.assert_close(out["log_probs"].double(), c["log_probs"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["token_entropy"].double(), c["token_entropy"], rtol=1e-5, atol=1e-5)
    assert set(trl_math.get_response_log_probs(seeded_model, c["input_ids"], c["labels"])) == {"log_probs"}


def test_chunked_log_probs_and_entropy_match_across_chunk_sizes(cases, seeded_model, monkeypatch):
    """Force many small chunks (3 positions each) and compare with one chunk: same values and gradients."""
    c = cases["model"]
    results = []
    for chunk_elements in (2**24, 3 * 301):
        monkeypatch.setattr(logprobs_module, "_CHUNK_ELEMENTS", chunk_elements)
        seeded_model.zero_grad()
        out = trl_math.get_response_log_probs(seeded_model, c["input_ids"], c["labels"], return_token_entropy=True)
        out["log_probs"].sum().backward()
        grad = seeded_model.model.embed_tokens.weight.grad.clone()
        results.append((out["log_probs"].detach(), out["token_entropy"], grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not results[0][1].requires_grad  # entropy is a monitoring quantity


def test_half_precision_log_probs_are_computed_in_float32(cases):
    logits = cases["entropy"]["logits"].float()
    labels = torch.randint(0, logits.shape[-1], logits.shape[:-1], generator=torch.Generator().manual_seed(0))
    expected = torch.log_softmax(logits.double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    got = logprobs_module._label_log_probs(logits.bfloat16(), labels)
    assert got.dtype == torch.float32
    # bf16 rounds the logits themselves (8 bits of mantissa); the reduction adds no further error
    torch.testing.assert_close(got.double(), torch.log_softmax(logits.bfloat16().double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1), rtol=1e-5, atol=1e-4)
    assert (got.double() - expected).abs().max() < 1.0


def test_label_log_probs_gradient_passes_gradcheck(monkeypatch):
    """The hand-written chunked backward equals finite differences (several chunks of 2 positions)."""
    monkeypatch.setattr(logprobs_module, "_CHUNK_ELEMENTS", 2 * 13)
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(2, 3, 13, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    labels = torch.randint(0, 13, (2, 3), generator=g)
    assert torch.autograd.gradcheck(lambda z: logprobs_module._label_log_probs(z, labels), (logits,))

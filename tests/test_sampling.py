"""The sampling seam without vLLM: vLLM's stop rule on token ids (a real Qwen tokenizer), and the transformers
sampler's seeds, n and request ids. tests/test_vllm_engine.py holds both samplers to the real engine."""

from __future__ import annotations

import pytest
import torch

from trl_math.sampling import (
    Completion,
    SamplingConfig,
    TransformersSampler,
    completion_from_token_ids,
    request_seed,
    sample_sharded,
)

SCRIPT = " 1+1=2 </think> <answer> 2 </answer>. Then more"


def test_stop_string_completed_inside_a_token_is_cut_after_the_stop_string(qwen_tokenizer):
    ids = qwen_tokenizer(SCRIPT, add_special_tokens=False)["input_ids"]
    closing = next(i for i, token in enumerate(ids) if qwen_tokenizer.decode([token]) == ">.")  # "</answer>" ends in ">."
    completion = completion_from_token_ids(ids, qwen_tokenizer, ["</answer>"], min_tokens=4,
                                           eos_ids=[qwen_tokenizer.eos_token_id])
    assert completion == Completion(" 1+1=2 </think> <answer> 2 </answer>", ids[: closing + 1], "stop")
    assert qwen_tokenizer.decode(completion.token_ids).endswith("</answer>.")  # the whole last token was sampled
    without = completion_from_token_ids(ids, qwen_tokenizer, ["</answer>"], 4, include_stop_str_in_output=False)
    assert without.text == " 1+1=2 </think> <answer> 2 " and without.token_ids == completion.token_ids


def test_min_tokens_holds_back_an_early_stop_and_eos_or_length_end_the_rest(qwen_tokenizer):
    eos = qwen_tokenizer.eos_token_id
    early = qwen_tokenizer("</answer> x </answer> y", add_special_tokens=False)["input_ids"]
    first_close = next(k for k in range(1, len(early) + 1) if "</answer>" in qwen_tokenizer.decode(early[:k]))
    # vLLM checks stop strings once more than min_tokens tokens are out: token first_close must come after them.
    held = completion_from_token_ids(early, qwen_tokenizer, ["</answer>"], min_tokens=first_close)
    assert held.text == "</answer> x </answer>" and held.finish_reason == "stop"
    assert completion_from_token_ids(early, qwen_tokenizer, ["</answer>"], min_tokens=first_close - 1).text == "</answer>"

    body = qwen_tokenizer(" no tags here", add_special_tokens=False)["input_ids"]
    padded = body + [eos] + [qwen_tokenizer.pad_token_id] * 3  # a finished row of a left-padded batch
    assert completion_from_token_ids(padded, qwen_tokenizer, ["</answer>"], eos_ids=[eos]) == \
        Completion(" no tags here", body + [eos], "stop")
    assert completion_from_token_ids(body, qwen_tokenizer, ["</answer>"], eos_ids=[eos]) == \
        Completion(" no tags here", body, "length")


def test_request_seeds_leave_room_for_n_samples_each():
    seeds = [request_seed(10, r, n=4) + k for r in range(3) for k in range(4)]
    assert seeds == list(range(10, 22))  # vLLM gives sample k of a request seed + k: no two samples share one
    assert request_seed(None, 5, 4) is None


def test_transformers_sampler_is_seeded_per_request_and_leaves_the_callers_rng(tiny_model, tiny_tokenizer):
    prompts = ["User: What is 2+3?\nAssistant: <think>", "hello", "x"]
    config = SamplingConfig(max_tokens=10, min_tokens=2, stop=["</answer>"], seed=7)
    sampler = TransformersSampler(tiny_model, tiny_tokenizer, config, batch_size=1)
    state = torch.get_rng_state()
    first = sampler.sample(prompts, n=2)
    assert torch.equal(state, torch.get_rng_state())
    assert sampler.sample(prompts, n=2) == first  # the same seed reproduces the samples
    assert [len(group) for group in first] == [2, 2, 2]
    assert all(group[0] != group[1] for group in first)  # n samples of a prompt draw different seeds
    # One sample per batch: a request draws from its own seed, wherever it stands in the call.
    assert sampler.sample(prompts[2:], n=2, request_ids=[2]) == first[2:]
    other = TransformersSampler(tiny_model, tiny_tokenizer, SamplingConfig(max_tokens=10, min_tokens=2, seed=8), 1)
    assert other.sample(prompts, n=2) != first
    for group in first:
        for completion in group:
            assert 2 <= completion.num_tokens <= 10 and completion.finish_reason in ("stop", "length")


def test_sample_sharded_on_one_process_is_the_samplers_own(tiny_model, tiny_tokenizer):
    sampler = TransformersSampler(tiny_model, tiny_tokenizer, SamplingConfig(max_tokens=6, seed=0), batch_size=4)
    prompts = ["a", "b", "c"]
    assert sample_sharded(sampler, prompts, n=1) == sampler.sample(prompts)


def test_sampling_config_rejects_what_no_backend_can_do():
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingConfig(max_tokens=2, min_tokens=4)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)

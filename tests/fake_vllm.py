"""A small stand-in for vLLM (which cannot be installed on CPU machines), honouring its public interface.

- `FakeSamplingParams`: SamplingParams' fields (temperature, top_p, max_tokens, min_tokens, stop,
  include_stop_str_in_output, n, seed, logprobs).
- `FakeLLM.generate(prompts, sampling_params)` -> list of `FakeRequestOutput` (.prompt, .outputs), each
  output a `FakeCompletionOutput` (.text, .token_ids, .finish_reason "stop"/"length", .stop_reason: the
  stop string that matched, None for EOS or length).
- `FakeLLM.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(iterable of (name,
  tensor))`, the path TRL and the handout sync policy weights through; each call is recorded.

Responses come from a scripted function `responder(prompt) -> text` (tokens: one per character), or
from a real Hugging Face causal LM sampled token by token here, with vLLM's stop rules implemented
independently of trl_math. `install(monkeypatch)` puts the fake in `sys.modules["vllm"]` and makes TRL's
colocate backend build it.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from dataclasses import dataclass

import torch


@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] | str | None = None
    include_stop_str_in_output: bool = False
    seed: int | None = None
    logprobs: int | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


@dataclass
class FakeCompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str
    stop_reason: str | int | None = None


@dataclass
class FakeRequestOutput:
    request_id: str
    prompt: str
    prompt_token_ids: list[int]
    outputs: list[FakeCompletionOutput]
    finished: bool = True


class FakeVLLMModel:
    """The engine's model: `load_weights` copies named tensors into the HF model (if any) and records them."""

    def __init__(self, hf_model=None):
        self.hf_model = hf_model
        self.load_calls: list[dict[str, torch.Tensor]] = []

    def load_weights(self, weights):
        loaded = {name: tensor.detach().clone() for name, tensor in weights}
        self.load_calls.append(loaded)
        if self.hf_model is not None:
            params = dict(self.hf_model.named_parameters())
            with torch.no_grad():
                for name, tensor in loaded.items():
                    params[name].copy_(tensor)
        return set(loaded)


class FakeLLM:
    """`vllm.LLM` look-alike. `FakeLLM(model=path)` loads a HF checkpoint; `FakeLLM(responder=fn)` is scripted."""

    def __init__(self, model: str | None = None, responder=None, hf_model=None, tokenizer=None, **engine_kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if responder is None and hf_model is None:
            hf_model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        if hf_model is not None and tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model or hf_model.name_or_path)
        self.responder, self.tokenizer, self.engine_kwargs = responder, tokenizer, engine_kwargs
        self.runner_model = FakeVLLMModel(hf_model)
        runner = types.SimpleNamespace(model=self.runner_model)
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner))
        )
        self.events: list[str] = []  # "load_weights", "reset_prefix_cache", "generate" in call order
        original = self.runner_model.load_weights

        def recorded_load(weights):
            self.events.append("load_weights")
            return original(weights)

        self.runner_model.load_weights = recorded_load
        self.generate_calls: list[list[str]] = []

    def reset_prefix_cache(self):
        self.events.append("reset_prefix_cache")

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        params = sampling_params or FakeSamplingParams()
        self.events.append("generate")
        self.generate_calls.append(prompts)
        generator = torch.Generator().manual_seed(params.seed if params.seed is not None else 0)
        results = []
        for number, prompt in enumerate(prompts):
            outputs = [self._complete(prompt, params, generator, index) for index in range(params.n)]
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if self.tokenizer else []
            results.append(FakeRequestOutput(str(number), prompt, prompt_ids, outputs))
        return results

    # ----------------------------------------------------------------------------------------------
    def _stop_match(self, text: str, previous_length: int, params: FakeSamplingParams):
        """vLLM's check: the first occurrence of a stop string that ends in the text added by this step."""
        hits = []
        for stop in params.stops():
            position = text.find(stop, max(0, previous_length - len(stop) + 1))
            if position >= 0:
                hits.append((position, stop))
        return min(hits) if hits else None

    def _finish(self, index, text, token_ids, params, reason, stop=None):
        if stop is not None:
            position, string = stop
            text = text[: position + (len(string) if params.include_stop_str_in_output else 0)]
        return FakeCompletionOutput(index, text, token_ids, None, None, reason, string if stop else None)

    def _complete(self, prompt, params, generator, index) -> FakeCompletionOutput:
        if self.responder is not None:
            full = self.responder(prompt)
            for length in range(1, len(full) + 1):  # one token per character
                text = full[:length]
                if length >= params.min_tokens and (stop := self._stop_match(text, length - 1, params)) is not None:
                    return self._finish(index, text, [ord(c) for c in text], params, "stop", stop)
                if params.max_tokens is not None and length == params.max_tokens:
                    return self._finish(index, text, [ord(c) for c in text], params, "length")
            return self._finish(index, full, [ord(c) for c in full], params, "stop")  # then EOS
        return self._sample(prompt, params, generator, index)

    @torch.no_grad()
    def _sample(self, prompt, params, generator, index) -> FakeCompletionOutput:
        model, tokenizer = self.runner_model.hf_model, self.tokenizer
        eos = tokenizer.eos_token_id
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        generated: list[int] = []
        text = ""
        while params.max_tokens is None or len(generated) < params.max_tokens:
            logits = model(torch.tensor([ids + generated])).logits[0, -1].float()
            if len(generated) < params.min_tokens:
                logits[eos] = float("-inf")
            if params.temperature == 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / params.temperature, dim=-1)
                if params.top_p < 1.0:
                    ordered, order = probs.sort(descending=True)
                    keep = ordered.cumsum(0) - ordered < params.top_p
                    probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
                token = int(torch.multinomial(probs, 1, generator=generator))
            generated.append(token)
            previous_length, text = len(text), tokenizer.decode(generated, skip_special_tokens=True)
            if token == eos:
                return self._finish(index, text, generated, params, "stop")
            if len(generated) >= params.min_tokens and (stop := self._stop_match(text, previous_length, params)):
                return self._finish(index, text, generated, params, "stop", stop)
        return self._finish(index, tokenizer.decode(generated, skip_special_tokens=True), generated, params, "length")


def fake_vllm_module() -> types.ModuleType:
    """A module object that can stand in for `vllm` in sys.modules."""
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM = FakeLLM
    module.SamplingParams = FakeSamplingParams
    module.RequestOutput = FakeRequestOutput
    module.CompletionOutput = FakeCompletionOutput
    return module


def install(monkeypatch) -> list[FakeLLM]:
    """Make `import vllm` and TRL's colocate vLLM backend use the fake; returns the engines built, in order.

    TRL's colocate backend sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_* in os.environ: they are
    registered with monkeypatch first, so the test leaves the environment as it found it.
    """
    import trl.generation.vllm_generation as trl_vllm

    for variable in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if variable in os.environ:
            monkeypatch.setenv(variable, os.environ[variable])  # restored at teardown
        else:
            monkeypatch.setenv(variable, "unset")
            monkeypatch.delenv(variable)  # deleted again at teardown
    built: list[FakeLLM] = []

    class TrackedLLM(FakeLLM):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    module = fake_vllm_module()
    module.LLM = TrackedLLM
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(trl_vllm, "LLM", TrackedLLM, raising=False)
    monkeypatch.setattr(trl_vllm, "is_vllm_available", lambda *a, **k: True)
    return built

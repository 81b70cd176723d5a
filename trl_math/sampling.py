"""One seam for "sample responses to these prompts": a vLLM engine or transformers' generate, same semantics.

Evaluation (math_baseline, the supplement's benchmarks), SFT and expert-iteration validation, EI rollouts and
`log_generations` all sample through a `Sampler`; MathGRPOTrainer adapts TRL's own generation to the same
interface. Whatever the backend, a completion is what vLLM reports with `include_stop_str_in_output=True`:

- `text`: the decoded response (special tokens skipped), cut right after the first stop string completed
  after the first `min_tokens` tokens, as vLLM checks stop strings only once more than min_tokens tokens
  are out (or right before it, with include_stop_str_in_output=False).
  Text past the stop string, which the token completing it may carry (Qwen's ">." ends "</answer>."),
  is never part of it;
- `token_ids`: the sampled tokens up to the one that completed the stop string or EOS (kept), as vLLM's
  `token_ids`;
- `finish_reason`: "stop" (a stop string or EOS ended it) or "length" (max_tokens did).

Seeds: request `r` of a call (its position in the caller's list, or the `request_ids` given) is sampled
with seed `seed + r * n`; vLLM gives the k-th of its n samples `seed + r * n + k`, so no two samples of
an evaluation share a random stream, and the same seed reproduces the same samples however the prompts
are chunked. transformers' generate draws one stream per batch, seeded like the batch's first sample:
the same seed and batch size reproduce the same samples.

`load_sampler` decides vLLM or transformers for the recipes (`backend`: auto, vllm, transformers);
the trainers build their engine in their constructors and get their sampler from `trainer_sampler`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria

from .stopping import find_stop

BACKENDS = ("auto", "vllm", "transformers")


@dataclass
class SamplingConfig:
    """How responses are sampled, under vLLM SamplingParams' field names (defaults: the assignment's)."""

    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus-sampling top_p."})
    max_tokens: int = field(default=1024, metadata={"help": "Most tokens sampled per response."})
    min_tokens: int = field(default=4, metadata={"help": "Fewest tokens sampled per response (EOS and stop held back)."})
    stop: list[str] = field(
        default_factory=lambda: ["</answer>"], metadata={"help": "Responses end after the first of these strings."}
    )
    include_stop_str_in_output: bool = field(default=True, metadata={"help": "Keep the stop string in the response."})
    seed: int | None = field(
        default=None, metadata={"help": "Sampling seed (request r draws from seed + r * n). None: unseeded."}
    )

    def __post_init__(self):
        if self.max_tokens < max(1, self.min_tokens):
            raise ValueError(f"max_tokens ({self.max_tokens}) must be >= max(1, min_tokens={self.min_tokens})")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")

    def to_vllm(self, n: int = 1, seed: int | None = None):
        """The equivalent `vllm.SamplingParams` with `n` samples and `seed` (None: this config's); imports vLLM."""
        from vllm import SamplingParams

        return SamplingParams(
            n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
            min_tokens=self.min_tokens, stop=list(self.stop), include_stop_str_in_output=self.include_stop_str_in_output,
            seed=self.seed if seed is None else seed,
        )


@dataclass
class Completion:
    """One sampled response (see the module doc): its text, its tokens and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def request_seed(seed: int | None, request_id: int, n: int = 1) -> int | None:
    """The seed of request `request_id` of n samples: its samples draw seed + request_id * n + k (k < n)."""
    return None if seed is None else seed + request_id * n


def completion_from_token_ids(
    ids: Sequence[int],
    tokenizer,
    stop: Sequence[str] = (),
    min_tokens: int = 0,
    include_stop_str_in_output: bool = True,
    eos_ids: Sequence[int] = (),
) -> Completion:
    """vLLM's view of generated tokens (anything after the first EOS is ignored: padding of finished rows).

    The completion ends at the first EOS (kept, as vLLM keeps it in token_ids) or at the token that completes
    the first stop string ending after the first `min_tokens` tokens; its text is cut right after the stop string
    (right before it when not `include_stop_str_in_output`). Otherwise max_tokens ended it ("length").
    Special tokens (padding included) are left out of the text, as vLLM's detokenizer leaves them out, and so
    are the bytes of a character the tokens left unfinished (vLLM's incremental detokenizer holds them back;
    `decode` would show them as U+FFFD).
    """
    ids = list(ids)
    end = next((i for i, t in enumerate(ids) if t in set(eos_ids)), len(ids))
    body = ids[:end]
    match = find_stop(body, tokenizer, list(stop), min_tokens) if stop else None
    if match is not None:
        text = tokenizer.decode(body[: match.tokens], skip_special_tokens=True)
        return Completion(text[: match.end if include_stop_str_in_output else match.start], body[: match.tokens], "stop")
    text = tokenizer.decode(body, skip_special_tokens=True).rstrip("\ufffd")
    if end < len(ids):
        return Completion(text, ids[: end + 1], "stop")
    return Completion(text, body, "length")


class Sampler(ABC):
    """Samples `n` responses per prompt; see the module doc for what a completion is and how seeds work."""

    @abstractmethod
    def sample(self, prompts: Sequence[str], n: int = 1, request_ids: Sequence[int] | None = None) -> list[list[Completion]]:
        """`n` completions for each prompt, in prompt order. `request_ids` (default 0, 1, ...) place each prompt
        in the caller's whole list, for seeding."""


def _request_ids(prompts: Sequence[str], request_ids: Sequence[int] | None) -> list[int]:
    ids = list(range(len(prompts))) if request_ids is None else list(request_ids)
    if len(ids) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(ids)} request ids")
    return ids


class VLLMSampler(Sampler):
    """Samples with a `vllm.LLM` engine (standalone, or a trainer's colocated one whose weights it synced).

    `params`: a `vllm.SamplingParams` (e.g. the assignment's `eval_sampling_params`) or a `SamplingConfig`.
    Its `n` is replaced by each call's `n`, its seed by the request's seed (module doc).
    """

    def __init__(self, llm, params):
        self.llm = llm
        self.params = params.to_vllm() if isinstance(params, SamplingConfig) else params

    def _params_for(self, n: int, seed: int | None):
        import msgspec

        return msgspec.structs.replace(self.params, n=n, seed=seed)

    def sample(self, prompts, n=1, request_ids=None):
        ids = _request_ids(prompts, request_ids)
        if not prompts:
            return []
        if self.params.seed is None:
            params = self._params_for(n, None)
        else:
            params = [self._params_for(n, request_seed(self.params.seed, r, n)) for r in ids]
        outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [[Completion(c.text, list(c.token_ids), c.finish_reason) for c in o.outputs] for o in outputs]


class TransformersSampler(Sampler):
    """Samples with `model.generate`, `batch_size` sequences at a time, cut as vLLM would cut them.

    Prompts are tokenized as vLLM tokenizes them (the tokenizer's special tokens added). A seed forks torch's
    RNG, so the caller's random state is left untouched.
    """

    def __init__(self, model, tokenizer, config: SamplingConfig, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.config, self.batch_size = model, tokenizer, config, batch_size
        eos = model.generation_config.eos_token_id
        self.eos_ids = sorted({tokenizer.eos_token_id, *([eos] if isinstance(eos, int) else eos or [])} - {None})

    def sample(self, prompts, n=1, request_ids=None):
        ids = _request_ids(prompts, request_ids)
        flat = [(prompt, request_seed(self.config.seed, r, n), k) for prompt, r in zip(prompts, ids) for k in range(n)]
        completions: list[Completion] = []
        for start in range(0, len(flat), self.batch_size):
            batch = flat[start : start + self.batch_size]
            seed = None if batch[0][1] is None else batch[0][1] + batch[0][2]
            completions += self._generate([prompt for prompt, _, _ in batch], seed)
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    @torch.no_grad()
    def _generate(self, prompts: list[str], seed: int | None) -> list[Completion]:
        from transformers import StoppingCriteriaList, StopStringCriteria

        config, tokenizer, model = self.config, self.tokenizer, self.model
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        kwargs = {"max_new_tokens": config.max_tokens, "min_new_tokens": config.min_tokens, "pad_token_id": pad_id,
                  "do_sample": config.temperature > 0}
        if config.temperature > 0:
            kwargs |= {"temperature": config.temperature, "top_p": config.top_p, "top_k": 0}
        padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
        finally:
            tokenizer.padding_side = padding_side
        prompt_length = batch["input_ids"].shape[1]
        stopping = []
        if config.stop:
            stopping.append(_StopAfterMinTokens(StopStringCriteria(tokenizer, list(config.stop)), prompt_length + config.min_tokens))
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            output = model.generate(**batch, **kwargs, stopping_criteria=StoppingCriteriaList(stopping))
        return [
            completion_from_token_ids(row, tokenizer, config.stop, config.min_tokens, config.include_stop_str_in_output,
                                      self.eos_ids)
            for row in output[:, prompt_length:].tolist()
        ]


class _StopAfterMinTokens(StoppingCriteria):
    """A stopping criterion that may only fire once sequences are longer than `min_length` tokens (vLLM's
    min_tokens also holds back stop strings; transformers' stop_strings ignore min_new_tokens)."""

    def __init__(self, inner, min_length: int):
        self.inner, self.min_length = inner, min_length

    def __call__(self, input_ids, scores, **kwargs):
        return self.inner(input_ids, scores, **kwargs) & (input_ids.shape[1] > self.min_length)


def sample_sharded(sampler: Sampler, prompts: Sequence[str], n: int = 1, request_ids: Sequence[int] | None = None,
                   state=None) -> list[list[Completion]]:
    """`sampler.sample` over all processes: each samples an equal share of the prompts (the last share padded
    with a repeat, whose samples are dropped), and every process receives all completions in prompt order.

    Every process must call it with the same prompts (samplers that talk to a vLLM server are collective).
    `state`: an accelerate PartialState (None: the current one).
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = state or PartialState()
    ids = _request_ids(prompts, request_ids)
    if state.num_processes == 1:
        return sampler.sample(prompts, n, ids)
    mine = list(range(state.process_index, len(prompts), state.num_processes))
    share = math.ceil(len(prompts) / state.num_processes)
    padded = mine + [mine[-1] if mine else 0] * (share - len(mine)) if prompts else []
    out = sampler.sample([prompts[i] for i in padded], n, [ids[i] for i in padded])[: len(mine)]
    gathered = gather_object(list(zip(mine, out)))
    completions: list = [None] * len(prompts)
    for index, group in gathered:
        completions[index] = group
    return completions


def trainer_sampler(model, tokenizer, config: SamplingConfig, batch_size: int, vllm_generation=None) -> Sampler:
    """The sampler of a trainer: its colocated vLLM engine when it built one (TRL's VLLMGeneration, whose
    weights the trainer synced), else `model.generate`."""
    if vllm_generation is not None:
        return VLLMSampler(vllm_generation.llm, config)
    return TransformersSampler(model, tokenizer, config, batch_size)


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def resolve_backend(backend: str) -> str:
    """'vllm' or 'transformers' for a `backend` option ('auto': vLLM when it is installed)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        return "vllm" if vllm_available() else "transformers"
    return backend


def load_sampler(model_name_or_path: str, config: SamplingConfig, backend: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, **vllm_kwargs) -> Sampler:
    """A sampler over a model directory or Hub id: a vLLM engine (`vllm_kwargs` go to `vllm.LLM`) or the
    model on the first GPU (else CPU) with `generate`."""
    if resolve_backend(backend) == "vllm":
        from vllm import LLM

        return VLLMSampler(LLM(model=model_name_or_path, dtype=dtype, seed=config.seed or 0, **vllm_kwargs), config)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=torch_dtype).to(device).eval()
    return TransformersSampler(model, AutoTokenizer.from_pretrained(model_name_or_path), config, batch_size)

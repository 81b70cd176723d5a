"""The model and generation-backend options of the evaluation recipes (recipes/evaluate.py, recipes/zero_shot.py),
defined once, with the sampler they describe."""

from __future__ import annotations

from dataclasses import dataclass, field

from .sampling import BACKENDS, Sampler, SamplingConfig, load_sampler, resolve_backend


@dataclass
class SamplerArguments:
    """Which model samples, in which dtype, through vLLM or transformers' generate, in batches of what size."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Model: a local directory or a Hub id."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype: 'auto', 'bfloat16', 'float16' or 'float32'."})
    backend: str = field(
        default="auto",
        metadata={"help": f"Generation: one of {BACKENDS} ('auto': vLLM when it is installed)."},
    )
    batch_size: int = field(
        default=16,
        metadata={"help": "Prompts per transformers generate() call; with vLLM, 32x this many per engine call."},
    )
    vllm_gpu_memory_utilization: float = field(default=0.85, metadata={"help": "GPU memory fraction vLLM may take."})
    vllm_max_model_length: int | None = field(
        default=None, metadata={"help": "vLLM context length. None: the model's."}
    )
    vllm_enforce_eager: bool = field(
        default=False, metadata={"help": "vLLM without CUDA graphs or compilation: starts faster, generates slower."}
    )

    @property
    def chunk_size(self) -> int:
        """Prompts per sampler call of an evaluation (the vLLM engine batches them itself)."""
        return 32 * self.batch_size

    def resolved_backend(self) -> str:
        """'vllm' or 'transformers' (see `sampling.resolve_backend`)."""
        return resolve_backend(self.backend)

    def load_sampler(self, config: SamplingConfig) -> Sampler:
        """The sampler of this model and backend (`sampling.load_sampler`; vLLM with prefix caching: every prompt
        of an evaluation shares its template)."""
        if self.model_name_or_path is None:
            raise ValueError("model_name_or_path: required")
        return load_sampler(self.model_name_or_path, config, self.resolved_backend(), self.dtype, self.batch_size,
                            gpu_memory_utilization=self.vllm_gpu_memory_utilization,
                            max_model_len=self.vllm_max_model_length, enforce_eager=self.vllm_enforce_eager,
                            enable_prefix_caching=True)

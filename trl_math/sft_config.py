"""MathSFTConfig: TRL's SFTConfig with the assignment's SFT loss, data selection and validation knobs.

Training examples are the assignment's SFT format {prompt, response, ground_truth}, batched by
MathSFTTrainer's own collator (tokenize_prompt_and_output), so TRL's dataset preparation is skipped and
its packing / padding-free / DFT-loss options, which that path does not implement, are rejected.
Validation is the math_baseline evaluation: one sampled response per validation problem, graded, with
the eval_* fields (trl_math.validation.ValidationSamplingArguments) as its sampling: the assignment's by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

from trl import SFTConfig

from .resume import RESUME_HELP
from .validation import ValidationSamplingArguments

# TRL options whose code path MathSFTTrainer bypasses, with the only value it accepts.
_UNSUPPORTED_TRL_OPTIONS = {
    "packing": False,
    "padding_free": False,
    "assistant_only_loss": False,
    "loss_type": "nll",
    "completion_only_loss": None,
    "eval_packing": None,
}


@dataclass
class MathSFTConfig(SFTConfig, ValidationSamplingArguments):
    """SFTConfig plus the assignment's SFT options (see the module doc); defaults are the assignment's."""

    # The assignment's loss and data format
    normalize_constant: float = field(
        default=1.0,
        metadata={
            "help": "Per-example loss = sum of response-token NLL / normalize_constant (sft_microbatch_train_step); "
            "the batch mean follows."
        },
    )
    append_eos: bool = field(
        default=True,
        metadata={
            "help": "Append the tokenizer's EOS token to every response, so the model learns to stop after "
            "</answer>. False: train on the responses exactly as given."
        },
    )
    num_unique_examples: int | None = field(
        default=None,
        metadata={
            "help": "Train on a seeded random subset of this many examples (the sweep: 128, 256, 512, 1024). "
            "None: all. Taken after filter_correct; the subset is drawn with `data_seed` (or `seed`)."
        },
    )
    filter_correct: bool = field(
        default=False,
        metadata={
            "help": "Keep only the examples whose response earns reward 1 against their ground_truth (the "
            "filtered SFT run); the kept count is printed and written to <output_dir>/sft_data.json."
        },
    )

    length_aware_batching: bool = field(
        default=True,
        metadata={
            "help": "Regroup the rows of each optimizer step by length (trl_math.batching), each micro-batch as wide as "
            "its longest row: less padding, the same update (exact for equal micro-batches; an epoch's last, "
            "shorter one stays as the sampler drew it). False: the sampler's random micro-batches."
        },
    )

    # Validation: the math_baseline evaluation of the policy, sampled as ValidationSamplingArguments says
    num_logged_generations: int = field(
        default=4,
        metadata={
            "help": "At each evaluation, log_generations logs this many validation problems (prompt, response, "
            "rewards, token entropy) to <output_dir>/generations/ and the trackers. 0: off."
        },
    )
    eval_chunk_size: int = field(
        default=512,
        metadata={"help": "Validation problems sampled per round, over all processes (their records reach the disk "
                  "after each round)."},
    )

    # vLLM for validation (TRL's colocate backend; weights synced before each evaluation)
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Generate validation responses with vLLM, colocated with training on the same GPUs (TRL's "
            "colocate mode); the policy's weights are loaded into vLLM before each evaluation. False: "
            "transformers' generate, per_device_eval_batch_size prompts at a time."
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "GPU memory fraction vLLM may take (it shares the GPU with training)."}
    )
    vllm_max_model_length: int | None = field(
        default=None,
        metadata={"help": "vLLM context length (prompt + response). None: the model config's."},
    )
    vllm_tensor_parallel_size: int = field(
        default=1, metadata={"help": "GPUs per vLLM instance (must divide the number of processes)."}
    )

    resume: bool = field(default=True, metadata={"help": RESUME_HELP})

    # TRL / TrainingArguments fields whose defaults we change
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Truncate prompt + response to this many tokens (keeping the start). None: no truncation "
            "(the assignment's; a cut response never shows the model its answer and EOS)."
        },
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (the assignment: 1.0)."})
    per_device_eval_batch_size: int = field(
        default=16, metadata={"help": "Validation prompts per transformers generate() call (without vLLM)."}
    )

    # The resume check (trl_math.resume) also holds the world size: the batch is per_device_train_batch_size x
    # gradient_accumulation_steps x world_size.
    run_properties: ClassVar[tuple[str, ...]] = ("world_size",)

    def __post_init__(self):
        def fail(name: str, message: str):
            raise ValueError(f"MathSFTConfig: {name}: {message}")

        if not self.normalize_constant > 0:
            fail("normalize_constant", f"must be > 0, got {self.normalize_constant}")
        if self.num_unique_examples is not None and self.num_unique_examples < 1:
            fail("num_unique_examples", f"must be a positive integer or None (all), got {self.num_unique_examples}")
        if self.max_length is not None and self.max_length < 2:
            fail("max_length", f"must be >= 2 or None, got {self.max_length}")
        self.check_eval_sampling()
        if self.num_logged_generations < 0:
            fail("num_logged_generations", f"must be >= 0, got {self.num_logged_generations}")
        if self.eval_chunk_size < 1:
            fail("eval_chunk_size", f"must be >= 1, got {self.eval_chunk_size}")
        for name, accepted in _UNSUPPORTED_TRL_OPTIONS.items():
            if getattr(self, name) != accepted:
                fail(name, f"{getattr(self, name)!r} is not supported by MathSFTTrainer's collator and loss; "
                     f"leave it at {accepted!r}")
        # Batches are built by MathSFTTrainer's collator from the raw {prompt, response} columns.
        user = json.loads(self.dataset_kwargs) if isinstance(self.dataset_kwargs, str) else self.dataset_kwargs
        self.dataset_kwargs = {**(user or {}), "skip_prepare_dataset": True}
        super().__post_init__()

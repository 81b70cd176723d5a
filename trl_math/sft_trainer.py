"""MathSFTTrainer: TRL's SFTTrainer with the assignment's SFT loss and validation accuracy, nothing else.

Overridden hooks, each leaving the rest to TRL (optimizer, schedule, clipping, logging, checkpoints and
resume, PEFT, DeepSpeed/FSDP, Hub):

- `__init__` selects the examples (filter_correct, num_unique_examples) and batches them with
  `SFTCollator` (tokenize_prompt_and_output), instead of TRL's dataset preparation;
- `get_batch_samples` regroups the rows of each optimizer step by length (trl_math.batching,
  `length_aware_batching`): each micro-batch as wide as its longest row, the same update;
- `compute_loss` is sft_microbatch_train_step's loss without its backward: per example, the sum of the
  response tokens' NLL over normalize_constant; the mean over the micro-batch, divided by
  gradient_accumulation_steps (`loss_is_scaled_for_ga = True`: Trainer adds no scaling of its own, also
  not in the last, shorter accumulation window of an epoch). Log-probs come from TRL's fused LM head
  (no full logits). Its metrics (entropy, mean_token_accuracy, response_tokens) are summed over the optimizer
  step's micro-batches and reduced in one collective per step (trl_math.step_metrics);
- `evaluate` is validation accuracy (trl_math.validation): the math_baseline evaluation of the current policy
  on the validation problems (`eval_dataset`: prompt, ground_truth), graded with `reward_fn`, on vLLM
  (TRL's colocate backend, whose `sync_weights` loads the policy into the engine first, PEFT and ZeRO-3
  included) or on transformers' generate; every process samples a share of the problems.

Checkpoints appear whole (trl_math.checkpoints); `save_model` writes a model `from_pretrained` loads under every
engine, FSDP's sharded state dicts included (trl_math.model_saving).
"""

from __future__ import annotations

from pathlib import Path

from trl import SFTTrainer

from .batching import group_sft_micro_batches
from .checkpoints import ResumableTrainerMixin
from .files import write_json_atomic
from .generation_log import LogGenerationsCallback
from .grading import r1_zero_reward_fn
from .grading.reward_pool import grading_pool
from .losses import masked_normalize
from .model_card import AssignmentModelCardMixin
from .model_saving import FullModelSaveMixin
from .run_log import MetricsLogCallback
from .sampling import Sampler, trainer_sampler
from .sft_config import MathSFTConfig
from .sft_data import SFTCollator, select_sft_examples
from .step_metrics import StepTotals
from .validation import (announce_validation_sampling, validate, validation_dir, validation_metrics,
                         write_validation_problems)


class MathSFTTrainer(ResumableTrainerMixin, FullModelSaveMixin, AssignmentModelCardMixin, SFTTrainer):
    """SFT with the assignment's loss and periodic validation accuracy (see the module doc).

    `train_dataset`: {prompt, response[, ground_truth]} rows; `eval_dataset`: validation problems
    {prompt, ground_truth} (e.g. from `load_math_problems`); `reward_fn(response, ground_truth)`: grades
    validation responses and, with filter_correct, the training responses (default: r1_zero_reward_fn).
    """

    _tag_names = ["trl", "sft", "trl-math"]
    _name = "MathSFT"
    assignment_problem = "sft_experiment"
    loss_is_scaled_for_ga = True  # compute_loss divides by gradient_accumulation_steps, as the assignment does

    def __init__(
        self,
        model,
        args: MathSFTConfig,
        train_dataset,
        eval_dataset=None,
        processing_class=None,
        reward_fn=r1_zero_reward_fn,
        **kwargs,
    ):
        if not isinstance(args, MathSFTConfig):
            raise TypeError(f"MathSFTTrainer needs a MathSFTConfig, got {type(args).__name__}")
        missing = {"prompt", "response"} - set(train_dataset.column_names)
        if missing:
            raise ValueError(f"train_dataset: columns {sorted(missing)} are missing (the SFT format is prompt, response)")
        if processing_class is None:
            from transformers import AutoTokenizer

            source = model if isinstance(model, str) else model.config._name_or_path
            revision = (args.model_init_kwargs or {}).get("revision")
            processing_class = AutoTokenizer.from_pretrained(
                source, revision=revision, trust_remote_code=args.trust_remote_code
            )
        self.reward_fn = reward_fn
        self._grading_pool = None
        seed = args.seed if args.data_seed is None else args.data_seed
        train_dataset, self.sft_data_stats = select_sft_examples(
            train_dataset, reward_fn, args.filter_correct, args.num_unique_examples, seed,
            self.grading_pool if args.filter_correct else None,
        )
        super().__init__(
            model,
            args=args,
            data_collator=SFTCollator(processing_class, args.append_eos, args.max_length),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self._step_totals = StepTotals(("entropy", "top1", "tokens", "examples"))
        self._micro_batches_in_step = 0
        self.add_callback(MetricsLogCallback())
        if args.num_logged_generations > 0 and self.eval_dataset is not None:
            self.add_callback(LogGenerationsCallback(self, reward_fn, args.num_logged_generations))
        if self.accelerator.is_main_process:
            write_json_atomic(Path(args.output_dir) / "sft_data.json", self.sft_data_stats)
            if self.eval_dataset is not None:
                write_validation_problems(self.eval_dataset, args.output_dir)
                announce_validation_sampling(args.eval_sampling())
        if args.eval_strategy != "no":
            self._check_validation_supported()
        self.vllm_generation = None
        if args.use_vllm:
            from trl.generation.vllm_generation import VLLMGeneration

            self.vllm_generation = VLLMGeneration(
                model=self.model,
                accelerator=self.accelerator,
                processing_class=self.processing_class,
                mode="colocate",
                tensor_parallel_size=args.vllm_tensor_parallel_size,
                gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                max_model_length=args.vllm_max_model_length,
                trust_remote_code=args.trust_remote_code,
            )

    @property
    def grading_pool(self):
        """The batch grader of this trainer (worker processes started on first use, reused by every evaluation)."""
        if self._grading_pool is None:
            self._grading_pool = grading_pool(self.reward_fn)
        return self._grading_pool

    def _set_signature_columns_if_needed(self):
        # The collator needs the raw text columns; Trainer would drop every column the model does not take.
        if self._signature_columns is None:
            self._signature_columns = ["prompt", "response"]

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Trainer's micro-batches of one optimizer step, regrouped by length (trl_math.batching) when
        `length_aware_batching` is on."""
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.args.length_aware_batching:
            pad = self.processing_class.pad_token_id
            batches = group_sft_micro_batches(batches, self.processing_class.eos_token_id if pad is None else pad)
        return batches, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean over the micro-batch of -(sum of response-token log-probs) / normalize_constant."""
        mask = inputs["response_mask"]
        outputs = model(
            input_ids=inputs["input_ids"], shift_labels=inputs["labels"].masked_fill(~mask, -100), fused_lm_head=True
        )
        per_example_nll = -masked_normalize(outputs.log_probs, mask, self.args.normalize_constant, dim=-1)
        loss = per_example_nll.mean()
        if self.model.training:  # the assignment's scaling: always the configured number of micro-batches
            loss = loss / self.args.gradient_accumulation_steps
            m = mask.float()
            self._step_totals.add(entropy=(outputs.entropy * m).sum(), top1=(outputs.is_top1 * m).sum(),
                                  tokens=m.sum(), examples=m.new_tensor(len(m)))
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._micro_batches_in_step += 1
        if self._micro_batches_in_step == self.current_gradient_accumulation_steps:  # the optimizer step's last
            self._micro_batches_in_step = 0
            totals = self._step_totals.reduce(self.accelerator)
            tokens = max(totals["tokens"], 1.0)
            self._metrics["train"]["entropy"].append(totals["entropy"] / tokens)
            self._metrics["train"]["mean_token_accuracy"].append(totals["top1"] / tokens)
            self._metrics["train"]["response_tokens"].append(totals["tokens"] / totals["examples"])
        return loss

    def _check_validation_supported(self) -> None:
        """Validation samples with each process's plain module or vLLM engine: that deadlocks when a forward needs
        every process (FSDP, ZeRO-3) or when vLLM spans several processes (tensor parallel)."""
        sharded = self.is_fsdp_enabled or (
            self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        )
        if sharded:
            raise ValueError("eval_strategy: validation is not supported with sharded parameters (FSDP, DeepSpeed "
                             "ZeRO-3): train with accelerate_configs/ddp.yaml or zero2.yaml, or set eval_strategy: no")
        if self.args.use_vllm and self.args.vllm_tensor_parallel_size != 1:
            raise ValueError("vllm_tensor_parallel_size: validation drives each process's engine alone; use 1")

    def validation_sampler(self, model) -> Sampler:
        """How validation samples: the colocated vLLM engine (synced by `evaluate`) or `model.generate`."""
        return trainer_sampler(model, self.processing_class, self.args.eval_sampling(),
                               self.args.per_device_eval_batch_size, self.vllm_generation)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Validation accuracy of the current policy (trl_math.validation); logs and returns its metrics.

        Files: <output_dir>/eval/<metric_key_prefix>-step<N>/{generations.jsonl, summary.json}. A SIGTERM stops it
        between chunks (trl_math.preemption); the relaunch resumes it.
        """
        from trl.models.utils import unwrap_model_for_generation

        self._check_validation_supported()
        problems = self.eval_dataset if eval_dataset is None else eval_dataset
        step = self.state.global_step
        final = step >= self.state.max_steps  # the trained policy's: resumable when the policy is the same
        self.model.eval()
        if self.vllm_generation is not None:
            self.vllm_generation.sync_weights()  # every process: gathering sharded weights is collective
        with unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs
        ) as unwrapped:
            result = validate(
                self.validation_sampler(unwrapped), self.args.eval_sampling(), self.reward_fn, problems,
                validation_dir(self.args.output_dir, metric_key_prefix, step), chunk_size=self.args.eval_chunk_size,
                extra_summary={"step": step}, pool=self.grading_pool if self.accelerator.is_main_process else None,
                desc=f"validation (step {step})", resume=final or self.resuming_validation,
                fingerprint={"step": step, **({"policy": self.policy_fingerprint()} if final else {})},
                safe_point=self.validation_safe_point(final),
            )
        metrics = validation_metrics(result, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

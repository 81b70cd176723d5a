"""Expert iteration (the assignment's Algorithm 2): sample G answers per question, keep the correct ones,
SFT on them, repeat for n_ei_steps.

Not a TRL trainer but an outer loop over trl-math's own pieces, so its numbers compare with SFT's and
GRPO's: rollouts are sampled like validation responses (vLLM colocated, with the policy's weights synced
into the engine before each sampling, or transformers' generate), graded by the batch grader with the
same reward function, and each SFT phase is a MathSFTTrainer (the assignment's SFT loss, gradient
clipping 1.0, accelerate, report_to backends).

Every EI step draws its randomness from `seed + step` (question batch, rollouts, SFT data order). Once its SFT
phase is done it saves the model, the tokenizer, the step index, the RNG states and the log, then validates and
records that. A restarted run loads the last saved step, finishes its validation if that was cut short (resuming
its records), and continues with the next step: it ends with the same weights as an uninterrupted run
(tests/test_expert_iteration.py checks they are equal).

SIGTERM (trl_math.preemption): the run stops before or after the rollouts' sampling, after an optimizer step of
the SFT phase, between two chunks of validation problems, or after an EI step. A step not yet saved is abandoned
(the relaunch redoes it, identically); a saved one keeps its validation pending.

Each record of the log (metrics.jsonl) carries `step`, the EI step, and `optimizer_step`, the optimizer steps
of the SFT phases so far: the axis on which `trl-math plot` draws EI runs beside SFT's and GRPO's optimizer steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from transformers import TrainerCallback

from .files import JsonlWriter, write_json_atomic, write_jsonl_atomic
from .generation_log import response_entropies
from .grading import r1_zero_reward_fn
from .grading.reward_pool import grade
from .grading.reward_pool import grading_pool as make_grading_pool
from .model_card import launch_command, non_default_fields, render_model_card
from .run_log import METRICS_FILE
from .sampling import SamplingConfig, sample_sharded, trainer_sampler
from .sft_config import MathSFTConfig
from .sft_trainer import MathSFTTrainer
from .validation import (announce_validation_sampling, validate, validation_dir, validation_metrics,
                         write_validation_problems)

STATE_FILE = "ei_state.json"


@dataclass
class ExpertIterationConfig(MathSFTConfig):
    """MathSFTConfig (each EI step's SFT phase) plus the expert-iteration loop's own knobs.

    `num_train_epochs` is the number of SFT epochs per EI step. Validation (the eval_* fields) runs after
    every EI step.
    """

    n_ei_steps: int = field(default=5, metadata={"help": "Expert-iteration steps (the assignment: 5)."})
    questions_per_step: int = field(
        default=512, metadata={"help": "Questions sampled per EI step, the assignment's |D_b| (512, 1024 or 2048)."}
    )
    rollouts_per_question: int = field(default=4, metadata={"help": "Responses sampled per question (G)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "SFT epochs over the kept rollouts, per EI step."})
    rollout_temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature."})
    rollout_top_p: float = field(default=1.0, metadata={"help": "Rollout nucleus-sampling top_p."})
    rollout_max_tokens: int = field(default=1024, metadata={"help": "Most tokens sampled per rollout."})
    rollout_min_tokens: int = field(
        default=4, metadata={"help": "Fewest tokens sampled per rollout (no empty responses, see the handout)."}
    )
    entropy_sample_size: int = field(
        default=256,
        metadata={"help": "Rollouts (a seeded sample) whose mean token entropy is measured each EI step. 0: off."},
    )
    resume: bool = field(
        default=True,
        metadata={"help": f"Continue after the last completed EI step saved in output_dir ({STATE_FILE}), after "
                  "checking that the fields that define the run are unchanged. False: start over; through the recipe, "
                  "a previous run in output_dir is first moved to <output_dir>.replaced-<time>."},
    )

    def __post_init__(self):
        def fail(name: str, message: str):
            raise ValueError(f"ExpertIterationConfig: {name}: {message}")

        for name in ("n_ei_steps", "questions_per_step", "rollouts_per_question"):
            if getattr(self, name) < 1:
                fail(name, f"must be >= 1, got {getattr(self, name)}")
        if self.rollout_max_tokens < max(1, self.rollout_min_tokens):
            fail("rollout_max_tokens", f"({self.rollout_max_tokens}) must be >= max(1, rollout_min_tokens="
                 f"{self.rollout_min_tokens})")
        if self.filter_correct or self.num_unique_examples is not None:
            fail("filter_correct, num_unique_examples", "expert iteration keeps the reward-1 rollouts by itself; "
                 "leave them at False / None")
        if self.entropy_sample_size < 0:
            fail("entropy_sample_size", f"must be >= 0, got {self.entropy_sample_size}")
        super().__post_init__()

    def rollout_sampling(self, seed: int) -> SamplingConfig:
        """Rollout sampling (vLLM SamplingParams' field names), seeded for one EI step."""
        return SamplingConfig(
            temperature=self.rollout_temperature,
            top_p=self.rollout_top_p,
            max_tokens=self.rollout_max_tokens,
            min_tokens=self.rollout_min_tokens,
            stop=[self.eval_stop] if self.eval_stop else [],
            include_stop_str_in_output=True,
            seed=seed,
        )


def saved_state(output_dir: str | Path) -> str | None:
    """The folder of the last EI step an expert-iteration run resumes from (recorded in its state file once an EI
    step has completed), or None."""
    path = Path(output_dir) / STATE_FILE
    if not path.exists():
        return None
    return str(_step_dir(output_dir, json.loads(path.read_text())["completed_steps"] - 1))


def _step_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"ei_step_{step + 1:02d}"


class _AbandonOnSignal(TrainerCallback):
    """An SFT phase's safe point: after each optimizer step, a SIGTERM abandons the EI step (nothing of it is
    saved yet; the relaunch redoes it)."""

    def __init__(self, preemption):
        self.preemption = preemption

    def on_step_end(self, args, state, control, **kwargs):
        self.preemption.safe_point()


def _reject_sharded_training(args: ExpertIterationConfig) -> None:
    """EI generates, validates and saves with the plain module between SFT phases: parameters must be whole
    on every process (none, DDP, DeepSpeed ZeRO-1/2), and each process drives its own vLLM engine."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true") or \
            os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        raise ValueError("ExpertIterationTrainer: sharded parameters (FSDP, DeepSpeed ZeRO-3) are not supported: "
                         "launch with accelerate_configs/ddp.yaml or zero2.yaml")
    if args.use_vllm and args.vllm_tensor_parallel_size != 1:
        raise ValueError("ExpertIterationTrainer: vllm_tensor_parallel_size must be 1 (each process samples its "
                         "own share of the questions on its own engine)")


def _rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state().tolist()}


def _set_rng_states(states: dict) -> None:
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = states["numpy"]
    np.random.set_state((numpy[0], np.asarray(numpy[1], dtype=np.uint32), *numpy[2:]))
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class ExpertIterationTrainer:
    """Runs expert iteration on `train_dataset` questions (columns prompt, ground_truth).

    `eval_dataset` (prompt, ground_truth) is validated after every EI step. `reward_fn(response,
    ground_truth)` decides which rollouts are kept (reward 1) and grades validation.
    """

    def __init__(self, model, args: ExpertIterationConfig, train_dataset, eval_dataset=None,
                 processing_class=None, reward_fn=r1_zero_reward_fn):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not isinstance(args, ExpertIterationConfig):
            raise TypeError(f"ExpertIterationTrainer needs an ExpertIterationConfig, got {type(args).__name__}")
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            missing = {"prompt", "ground_truth"} - set(dataset.column_names) if dataset is not None else set()
            if missing:
                raise ValueError(f"{name}: columns {sorted(missing)} are missing (questions need prompt, ground_truth)")
        self.args = args
        self.state = PartialState()
        self.output_dir = Path(args.output_dir)
        self.base_model = model if isinstance(model, str) else model.config._name_or_path
        _reject_sharded_training(args)
        self.completed_steps, self.log, self.validation_pending = 0, [], False
        self.preemption = None  # the launch's trl_math.preemption.Preemption, set by its guard
        saved = self._load_state() if args.resume else None
        if saved is not None:
            self.completed_steps, self.log = saved["completed_steps"], saved["log"]
            self.validation_pending = not saved.get("validated", True)
            _set_rng_states(saved["rng"])
            model = str(self._step_dir(self.completed_steps - 1))
            processing_class = AutoTokenizer.from_pretrained(model)
        if self.state.is_main_process:  # the log holds exactly the completed steps (none when starting over)
            self._rewrite_metrics()
            if saved is None:
                (self.output_dir / STATE_FILE).unlink(missing_ok=True)
            if eval_dataset is not None:
                write_validation_problems(eval_dataset, self.output_dir)
                announce_validation_sampling(args.eval_sampling())
        self.state.wait_for_everyone()
        if isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
        self.model = model.to(self.state.device)
        self.processing_class = processing_class or AutoTokenizer.from_pretrained(self.base_model)
        self.train_dataset, self.eval_dataset, self.reward_fn = train_dataset, eval_dataset, reward_fn
        self._pool = None
        self.vllm_generation = None
        if args.use_vllm:
            from accelerate import Accelerator
            from trl.generation.vllm_generation import VLLMGeneration

            self.vllm_generation = VLLMGeneration(
                model=self.model, accelerator=Accelerator(), processing_class=self.processing_class, mode="colocate",
                tensor_parallel_size=args.vllm_tensor_parallel_size,
                gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                max_model_length=args.vllm_max_model_length, trust_remote_code=args.trust_remote_code,
            )

    # ----- the loop -----------------------------------------------------------------------------

    def train(self) -> list[dict]:
        """Run the remaining EI steps; returns the per-step log."""
        start = time.monotonic() - max((record.get("wall_time_s", 0.0) for record in self.log), default=0.0)
        try:
            if self.args.eval_on_start and not self.log and self.eval_dataset is not None:  # the step-0 point
                self.log.append({"step": 0, "optimizer_step": 0, **self._validate(0),
                                 "wall_time_s": round(time.monotonic() - start, 3)})
                if self.state.is_main_process:
                    self._rewrite_metrics()
            if self.validation_pending:  # the saved step's validation was cut short: finish it first
                self._validate_step(self.completed_steps - 1, start, None)
            for step in range(self.completed_steps, self.args.n_ei_steps):
                record, phase = self._ei_step(step)
                self.log.append(record)
                self._save_step(step)
                self._validate_step(step, start, phase)
            self._safe_point()
            if self.args.push_to_hub and self.state.is_main_process:
                self.push_to_hub()
        finally:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
        return self.log

    def _safe_point(self, validation_pending: bool = False) -> None:
        if self.preemption is not None:
            self.preemption.safe_point(validation_pending)

    def _validate_step(self, step: int, start: float, phase: MathSFTTrainer | None) -> None:
        """Validate the saved EI step `step` (resuming its records if a SIGTERM cut it short) and record it; its
        metrics also go to the report_to backends through the step's SFT phase (`phase`), when it ran here."""
        record = self.log[-1]
        record |= self._validate(step + 1, resume=True)  # records there come from this saved step's model
        record["wall_time_s"] = round(time.monotonic() - start, 3)
        self.validation_pending = False
        self._save_state()
        if phase is not None:
            phase.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"})
        self._safe_point()

    def save_preempted_checkpoint(self, validation_pending: bool) -> str | None:
        """Where a relaunch continues after a SIGTERM (trl_math.preemption): the last saved EI step (saved as soon
        as its SFT phase ended; whether its validation is pending is in the state file), None before the first."""
        return str(self._step_dir(self.completed_steps - 1)) if self.completed_steps else None

    def _ei_step(self, step: int) -> tuple[dict, MathSFTTrainer | None]:
        """Rollouts, their grading and the SFT phase of EI step `step`: its log record (validation aside) and the
        SFT phase's trainer (None when no rollout was kept)."""
        args, seed = self.args, self.args.seed + step
        questions = self.train_dataset.shuffle(seed=seed).select(range(min(args.questions_per_step, len(self.train_dataset))))
        prompts = [p for p in questions["prompt"] for _ in range(args.rollouts_per_question)]
        truths = [str(t) for t in questions["ground_truth"] for _ in range(args.rollouts_per_question)]
        completions = self._sample(list(questions["prompt"]), args.rollout_sampling(seed))
        rewards = self._grade([c.text for c in completions], truths)
        kept = [
            {"prompt": p, "response": c.text, "ground_truth": t}
            for p, c, t, r in zip(prompts, completions, truths, rewards) if r["reward"] == 1
        ]
        record = {
            "step": step + 1,
            # + this step's SFT phase, below; None (unknown) on in a run resumed from a log written before trl-math
            # counted it, which `trl-math plot` then refuses to draw on the optimizer-step axis
            "optimizer_step": self.log[-1].get("optimizer_step") if self.log else 0,
            "ei/rollouts": len(completions),
            "ei/kept": len(kept),
            "ei/kept_fraction": len(kept) / len(completions),
            "ei/format_reward": float(np.mean([r["format_reward"] for r in rewards])),
            "ei/response_tokens": float(np.mean([c.num_tokens for c in completions])),
        }
        lengths = {True: [], False: []}
        for c, r in zip(completions, rewards):
            lengths[r["reward"] == 1].append(c.num_tokens)
        record["ei/response_tokens_correct"] = float(np.mean(lengths[True])) if lengths[True] else None
        record["ei/response_tokens_incorrect"] = float(np.mean(lengths[False])) if lengths[False] else None
        record["ei/response_entropy"] = self._rollout_entropy(prompts, completions, seed)
        self._safe_point()
        if self.state.is_main_process:
            self._write_jsonl(self._step_dir(step) / "rollouts.jsonl", [
                {"prompt": p, "response": c.text, "ground_truth": t, **r, "response_tokens": c.num_tokens,
                 "finish_reason": c.finish_reason} for p, c, t, r in zip(prompts, completions, truths, rewards)
            ])
        trainer = None
        if kept:
            trainer = self._sft(step, seed, Dataset.from_list(kept))
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            record["ei/sft_loss"] = losses[-1] if losses else None
            record["ei/sft_train_loss"] = next((h["train_loss"] for h in trainer.state.log_history if "train_loss" in h), None)
            if record["optimizer_step"] is not None:
                record["optimizer_step"] += trainer.state.global_step
        else:  # nothing to learn from: the policy stays as it is
            record["ei/sft_loss"] = record["ei/sft_train_loss"] = None
        return record, trainer

    def _sample(self, questions: list[str], sampling: SamplingConfig):
        """G rollouts per question, question-major; the processes sample shares of the questions, and question q's
        rollouts draw from the seeds sampling.seed + q * G + k (sampling module), whatever the process count."""
        self._safe_point()
        groups = sample_sharded(self._synced_sampler(sampling), questions, self.args.rollouts_per_question,
                                state=self.state)
        return [c for group in groups for c in group]

    def _synced_sampler(self, sampling: SamplingConfig):
        """A sampler of the current policy: the colocated vLLM engine once the policy's weights are synced into it
        (every process: gathering sharded weights is collective), or `model.generate`."""
        self.model.eval()
        if self.vllm_generation is not None:
            self.vllm_generation.sync_weights()
        return trainer_sampler(self.model, self.processing_class, sampling, self.args.per_device_eval_batch_size,
                               self.vllm_generation)

    @property
    def grading_pool(self):
        """The batch grader (worker processes started on first use, on the main process; closed by train())."""
        if self._pool is None:
            self._pool = make_grading_pool(self.reward_fn)
        return self._pool

    def _grade(self, responses: list[str], truths: list[str]) -> list[dict]:
        """Rewards from the batch grader on the main process, shared with every process."""
        rewards = None
        if self.state.is_main_process:
            rewards = grade(self.reward_fn, responses, truths, self.grading_pool)
        return broadcast_object_list([rewards], from_process=0)[0] if self.state.num_processes > 1 else rewards

    def _rollout_entropy(self, prompts, completions, seed: int) -> float | None:
        size = min(self.args.entropy_sample_size, len(completions))
        if size == 0:
            return None
        picked = random.Random(seed).sample(range(len(completions)), size)
        values = response_entropies(self.model, self.processing_class, [prompts[i] for i in picked],
                                    [completions[i].text for i in picked], self.args.per_device_eval_batch_size)
        values = [v for v in values if v == v]  # empty responses have no entropy
        return float(np.mean(values)) if values else None

    def _sft(self, step: int, seed: int, dataset: Dataset) -> MathSFTTrainer:
        """One SFT phase (a fresh optimizer, as in Algorithm 2) on the kept rollouts."""
        if self.state.is_main_process:  # a step that died half-way left its SFT logs: start them afresh
            shutil.rmtree(self._step_dir(step) / "sft", ignore_errors=True)
        self.state.wait_for_everyone()
        sft_args = dataclasses.replace(
            self.args, output_dir=str(self._step_dir(step) / "sft"), seed=seed, data_seed=seed, use_vllm=False,
            eval_strategy="no", eval_on_start=False, save_strategy="no", push_to_hub=False, resume=False,
            model_init_kwargs=None,
        )
        trainer = MathSFTTrainer(model=self.model, args=sft_args, train_dataset=dataset,
                                 processing_class=self.processing_class, reward_fn=self.reward_fn)
        if self.preemption is not None:
            trainer.add_callback(_AbandonOnSignal(self.preemption))
        if self.state.is_main_process:  # exactly what this phase trains on
            self._write_jsonl(self._step_dir(step) / "sft_examples.jsonl", trainer.train_dataset.to_list())
        trainer.train()
        return trainer

    def _validate(self, step: int, resume: bool = False) -> dict:
        """Validation after EI step `step` (0: before the first), logged as eval_* (trl_math.validation); a
        SIGTERM stops it between chunks, and `resume` continues its records."""
        if self.eval_dataset is None:
            return {}
        sampling = self.args.eval_sampling()
        result = validate(self._synced_sampler(sampling), sampling, self.reward_fn, self.eval_dataset,
                          validation_dir(self.output_dir, "ei", step), chunk_size=self.args.eval_chunk_size,
                          extra_summary={"ei_step": step}, fingerprint={"ei_step": step}, resume=resume,
                          state=self.state, pool=self.grading_pool if self.state.is_main_process else None,
                          desc=f"validation (EI step {step})", safe_point=self._safe_point)
        return validation_metrics(result)

    # ----- saving, resuming, pushing ---------------------------------------------------------------

    def _step_dir(self, step: int) -> Path:
        return _step_dir(self.output_dir, step)

    def _load_state(self) -> dict | None:
        path = self.output_dir / STATE_FILE
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        if not (self._step_dir(saved["completed_steps"] - 1) / "config.json").exists():
            raise FileNotFoundError(f"{path}: says {saved['completed_steps']} EI steps are done, but "
                                    f"{self._step_dir(saved['completed_steps'] - 1)} holds no model")
        return saved

    def _save_step(self, step: int) -> None:
        """Model and tokenizer of the step, then the state file (atomically: the step counts once both exist), with
        its validation pending."""
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            target = self._step_dir(step)
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp)
            self.processing_class.save_pretrained(tmp)
            for entry in ("rollouts.jsonl", "sft_examples.jsonl", "sft"):  # written during the step
                if (target / entry).exists():
                    os.replace(target / entry, tmp / entry)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        self.completed_steps, self.validation_pending = step + 1, self.eval_dataset is not None
        self._save_state()

    def _save_state(self) -> None:
        """The state file (the completed steps, whether the last one's validation is pending, the RNG states, the
        log) and the metrics log."""
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            write_json_atomic(self.output_dir / STATE_FILE, {
                "completed_steps": self.completed_steps, "validated": not self.validation_pending,
                "n_ei_steps": self.args.n_ei_steps, "seed": self.args.seed, "rng": _jsonable(_rng_states()),
                "log": self.log,
            })
            self._rewrite_metrics()
        self.state.wait_for_everyone()

    def _rewrite_metrics(self) -> None:
        """The plot-ready log (`trl-math plot` reads it): one line per completed EI step, from self.log."""
        write_jsonl_atomic(self.output_dir / METRICS_FILE, self.log)

    @staticmethod
    def _write_jsonl(path: Path, rows: list[dict]) -> None:
        with JsonlWriter(path) as writer:
            for row in rows:
                writer.write(row)

    def end(self) -> None:
        """Tear down the process group of an `accelerate launch` run (every process, once all are done)."""
        self.state.wait_for_everyone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def push_to_hub(self) -> str:
        """Upload the final model, tokenizer, log and a model card to `hub_model_id` (or the folder's name)."""
        from transformers.utils.hub import hf_api

        final = self.output_dir / "final"
        shutil.rmtree(final, ignore_errors=True)
        self.model.save_pretrained(final)
        self.processing_class.save_pretrained(final)
        shutil.copy(self.output_dir / METRICS_FILE, final / METRICS_FILE)
        validation = {k: v for k, v in (self.log[-1] if self.log else {}).items() if k.startswith("eval_")}
        (final / "README.md").write_text(render_model_card(
            problem="expert_iteration_experiment", base_model=self.base_model,
            config=non_default_fields(self.args), validation=validation, command=launch_command(),
        ), encoding="utf-8")
        api = hf_api()
        repo = api.create_repo(self.args.hub_model_id or self.output_dir.name, token=self.args.hub_token,
                               private=self.args.hub_private_repo, exist_ok=True).repo_id
        return api.upload_folder(repo_id=repo, folder_path=str(final), commit_message="End of expert iteration",
                                 token=self.args.hub_token)

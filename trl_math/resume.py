"""Resume by default: a recipe relaunched into its output_dir continues the run saved there.

A run is its output_dir. When a run starts, its recipe writes `run_config.json` (`run_config`): every field of
its argument dataclasses (TRL's ModelConfig, the data arguments, the training config) except those listed in
MAY_CHANGE, plus a fingerprint of the training data and of the validation sample as the trainer sees them
(`data_fingerprint`: a changed file, limit, seed or tokenizer changes them). The allow-list is the short one:
MAY_CHANGE holds what a relaunch may change without changing the run (where and how it reports and saves, how
long it runs, how often it validates, the devices and engines it runs on); everything else, including any field a
future TRL adds, is checked. A config class may also list `derived_fields` (computed from other fields, e.g.
GRPO's per-device batch from the world size) to leave out, and `run_properties` (attributes that are not
fields, e.g. `world_size` where the batch is per device) to add.

Relaunched with `resume: true` (the default), the recipe continues from the run's last checkpoint (the last
complete `checkpoint-N`; expert iteration: its last completed EI step) after checking the recorded values: a
changed one is an error naming it. With `resume: false`, or with nothing to resume, a previous run in output_dir
is moved aside whole, to `<output_dir>.replaced-<time>`: old and new checkpoints and logs never mix, and nothing is
deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .files import write_json_atomic
from .run_log import METRICS_FILE

RUN_FILE = "run_config.json"
TRAIN_DATA, VALIDATION_SAMPLE = "train_data", "validation_sample"  # the fingerprints' names in run_config.json

# What a relaunch may change (module doc): every other field of the argument dataclasses defines the run.
MAY_CHANGE: frozenset[str] = frozenset({
    # where and how the run reports
    "output_dir", "run_name", "project", "report_to", "trackio_bucket_id", "trackio_space_id",
    "trackio_static_space_id", "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter",
    "log_level", "log_level_replica", "log_on_each_node", "disable_tqdm", "skip_memory_metrics",
    "include_num_input_tokens_seen", "debug", "log_completions", "log_completions_hub_repo", "log_multimodal",
    "log_unique_prompts", "num_completions_to_print", "log_rollouts", "num_logged_generations",
    # saving, the Hub, resuming
    "save_strategy", "save_steps", "save_total_limit", "save_on_each_node", "save_only_model",
    "enable_jit_checkpoint", "restore_callback_states_from_checkpoint", "push_to_hub", "hub_model_id",
    "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push", "hub_revision", "resume",
    "resume_from_checkpoint",
    # how long it runs
    "max_steps", "max_train_hours", "n_ei_steps",
    # how often and in what batches it validates (what and how it samples is checked)
    "do_train", "do_eval", "do_predict", "eval_strategy", "eval_steps", "eval_delay", "eval_on_start",
    "eval_rollout_batches", "eval_accumulation_steps", "eval_do_concat_batches", "eval_use_gather_object",
    "per_device_eval_batch_size", "eval_chunk_size", "batch_eval_metrics", "prediction_loss_only",
    "include_for_metrics", "final_full_eval",
    # where the data files live (their content is fingerprinted)
    "train_source", "eval_source", "sft_source", "hh_sources",
    # devices, memory and speed
    "use_cpu", "local_rank", "ddp_backend", "ddp_broadcast_buffers", "ddp_bucket_cap_mb",
    "ddp_find_unused_parameters", "ddp_static_graph", "ddp_timeout", "dataloader_num_workers",
    "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context", "dataset_num_proc", "gradient_checkpointing", "gradient_checkpointing_kwargs",
    "activation_checkpointing", "activation_checkpointing_kwargs", "activation_offloading", "torch_compile",
    "torch_compile_backend", "torch_compile_mode", "torch_empty_cache_steps", "deepspeed", "fsdp", "fsdp_config",
    "accelerator_config", "parallelism_config", "use_liger_kernel", "liger_kernel_config", "attn_implementation",
    "ref_model_device", "ds3_gather_for_generation", "vllm_mode", "vllm_server_base_url", "vllm_server_host",
    "vllm_server_port", "vllm_server_timeout", "vllm_group_port", "vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size", "vllm_enable_sleep_mode", "vllm_max_model_length", "vllm_model_impl",
})
RESUME_HELP = ("Continue the run saved in output_dir, if any (its last checkpoint), after checking that the fields "
               "that define the run are unchanged. False: start over; a previous run in output_dir is first moved to "
               "<output_dir>.replaced-<time>.")


def _plain(value):
    """`value` as it reads back from JSON (enums, tuples and paths included)."""
    return json.loads(json.dumps(value, default=str))


def data_fingerprint(data) -> str:
    """A hash of data as a trainer sees it: a `datasets.Dataset` (every column, in order) or a packed dataset (its
    token stream and sequence length: PackedSFTDataset)."""
    digest = hashlib.sha256()
    if hasattr(data, "column_names"):
        for name in sorted(data.column_names):
            digest.update(json.dumps([name, data[name]], ensure_ascii=False, default=str).encode("utf-8"))
    else:
        digest.update(f"seq_length={data.seq_length};".encode())
        digest.update(data.tokens.numpy().tobytes())
    return digest.hexdigest()


def run_config(model_args, *arguments, train=None, validation=None) -> dict:
    """What defines a run (module doc): every field of `model_args` (TRL's ModelConfig) and of each argument
    dataclass but those in MAY_CHANGE and the class's `derived_fields`, each class's `run_properties`, and the
    fingerprints of the `train` data and of the `validation` sample (data_fingerprint; left out when None)."""
    config = {}
    for args in (model_args, *arguments):
        derived = set(getattr(type(args), "derived_fields", ()))
        config.update({f.name: getattr(args, f.name) for f in dataclasses.fields(args)
                       if f.init and f.name not in MAY_CHANGE and f.name not in derived})
        config.update({name: getattr(args, name) for name in getattr(type(args), "run_properties", ())})
    for name, data in ((TRAIN_DATA, train), (VALIDATION_SAMPLE, validation)):
        if data is not None:
            config[name] = data_fingerprint(data)
    return _plain(config)


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` of output_dir (trl-math publishes checkpoints whole: trl_math.checkpoints)."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def _holds_run(output_dir: Path, latest: Callable[[Path], str | None]) -> bool:
    """Whether output_dir holds a run (its config, log or a checkpoint), rather than only files of the user's."""
    return any((output_dir / name).exists() for name in (RUN_FILE, METRICS_FILE)) or \
        last_checkpoint(output_dir) is not None or latest(output_dir) is not None


def _mismatches(saved: dict, config: dict) -> list[str]:
    """'field (value in the run, value now)' for every run field both configs hold with different values."""
    def differs(name):
        if name in (TRAIN_DATA, VALIDATION_SAMPLE):
            return f"{name} (the content differs: fingerprint {saved[name][:12]} in the run, {config[name][:12]} now)"
        return f"{name} ({saved[name]!r} in the run, {config[name]!r} now)"

    return [differs(name) for name in sorted(saved.keys() & config.keys()) if saved[name] != config[name]]


def move_aside(output_dir: Path) -> Path:
    """Rename output_dir to `<output_dir>.replaced-<time>` (kept whole, nothing deleted); returns the new path."""
    if Path.cwd().resolve().is_relative_to(output_dir.resolve()):
        raise ValueError(f"output_dir: {output_dir} holds a previous run and contains the working directory, so "
                         "starting over cannot move it aside; choose another output_dir")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = output_dir.with_name(f"{output_dir.name}.replaced-{stamp}")
    for n in range(2, 1000):
        if not target.exists():
            break
        target = output_dir.with_name(f"{output_dir.name}.replaced-{stamp}-{n}")
    output_dir.rename(target)
    return target


def _decide(output_dir: Path, recipe: str, config: dict, resume: bool, explicit: str | None,
            latest: Callable[[Path], str | None]) -> str | None:
    """The main process's decision (module doc): the checkpoint to resume from, or None after preparing a fresh
    output_dir. Raises on a mismatch."""
    run_file = output_dir / RUN_FILE
    checkpoint = explicit or (latest(output_dir) if resume else None)
    if checkpoint is not None:
        saved = json.loads(run_file.read_text()) if run_file.exists() else None
        if saved is None:
            print(f"resume: {run_file} is missing (a run from before trl-math recorded its settings): its settings "
                  "are not checked; recording this launch's", file=sys.stderr)
            write_json_atomic(run_file, {"recipe": recipe, "fields": config})
        else:
            problems = [f"recipe ({saved['recipe']!r} in the run, {recipe!r} now)"] if saved["recipe"] != recipe else []
            problems += _mismatches(saved["fields"], config)
            if problems:
                raise ValueError(
                    f"output_dir {output_dir} holds a run with other settings than this launch: {'; '.join(problems)}. "
                    "Relaunch with the run's settings to continue it, pass --resume false to start over (the "
                    f"old run is moved to {output_dir}.replaced-<time>), or choose another output_dir")
        print(f"resume: continuing the run in {output_dir} from {checkpoint}", flush=True)
        return checkpoint
    if output_dir.exists() and _holds_run(output_dir, latest):
        reason = "--resume false" if resume is False else "it holds no checkpoint to resume"
        print(f"resume: starting over ({reason}): the previous run moved to {move_aside(output_dir)}", flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_file, {"recipe": recipe, "fields": config})
    return None


def resume_or_start_over(training_args, recipe: str, config: dict,
                         latest: Callable[[Path], str | None] = last_checkpoint) -> str | None:
    """Prepare `training_args.output_dir` for a launch of `recipe` with the run fields `config` (see run_config):
    returns the checkpoint to resume from (`latest(output_dir)`, or an explicit `resume_from_checkpoint`), or None
    to start a new run (module doc). Every process calls it; the main process decides and tells the others."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    explicit = training_args.resume_from_checkpoint
    if explicit and not training_args.resume:
        raise ValueError("resume, resume_from_checkpoint: --resume false starts over, but resume_from_checkpoint "
                         f"({explicit}) asks to continue; set one of them")
    if explicit and not Path(explicit).is_dir():
        raise ValueError(f"resume_from_checkpoint: {explicit} is not a checkpoint folder")
    state = PartialState()
    decision, failure = [None, None], None  # [checkpoint, error message]
    if state.is_main_process:
        try:
            decision[0] = _decide(Path(training_args.output_dir), recipe, config, training_args.resume, explicit,
                                  latest)
        except Exception as error:  # the other processes must hear of it, not wait for a decision forever
            failure, decision[1] = error, f"{type(error).__name__}: {error}"
    if state.use_distributed:
        broadcast_object_list(decision, from_process=0)
    if failure is not None:
        raise failure
    if decision[1] is not None:
        raise RuntimeError(f"the main process failed to prepare output_dir: {decision[1]}")
    return decision[0]

"""Resume by default: a recipe relaunched into its output_dir continues the run saved there.

A run is its output_dir. When a run starts, its recipe writes `run_config.json`: the fields that define the run
(each argument class lists its `run_fields`: the objective, batch and sampling knobs, the optimizer, the
training data, the model, the seed), not the ones a relaunch may change (output, logging, validation, saving,
max_steps / max_train_hours / n_ei_steps, devices, vLLM). Relaunched with `resume: true` (the default), the
recipe continues from the run's last checkpoint (GRPO, SFT: the last complete `checkpoint-N`; expert
iteration: `ei_state.json`) after checking those fields: a changed one is an error naming it. With
`resume: false`, or with nothing to resume, a previous run in output_dir is moved aside whole, to
`<output_dir>.replaced-<time>`: old and new checkpoints and logs never mix, and nothing is deleted.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .files import write_json_atomic
from .run_log import METRICS_FILE

RUN_FILE = "run_config.json"

# TrainingArguments fields that shape every update, whichever trainer.
OPTIMIZER_RUN_FIELDS: tuple[str, ...] = (
    "seed", "data_seed", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim",
    "optim_args", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm", "bf16", "fp16",
)
# TRL's ModelConfig: the model and its adapters.
MODEL_RUN_FIELDS: tuple[str, ...] = (
    "model_name_or_path", "model_revision", "dtype", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
    "lora_target_modules", "lora_target_parameters", "lora_modules_to_save", "lora_task_type", "use_rslora",
    "use_dora", "load_in_8bit", "load_in_4bit",
)
RESUME_HELP = ("Continue the run saved in output_dir, if any (its last checkpoint), after checking that the fields "
               "that define the run are unchanged. False: start over; a previous run in output_dir is first moved to "
               "<output_dir>.replaced-<time>.")


def _plain(value):
    """`value` as it reads back from JSON (enums, tuples and paths included)."""
    return json.loads(json.dumps(value, default=str))


def run_config(model_args, *arguments) -> dict:
    """The fields that define a run: MODEL_RUN_FIELDS of TRL's ModelConfig, and each argument dataclass's
    `run_fields`."""
    config = {name: getattr(model_args, name, None) for name in MODEL_RUN_FIELDS}
    for args in arguments:
        config.update({name: getattr(args, name) for name in type(args).run_fields})
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
    return [f"{name} ({saved[name]!r} in the run, {config[name]!r} now)"
            for name in sorted(saved.keys() & config.keys()) if saved[name] != config[name]]


def _move_aside(output_dir: Path) -> Path:
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
        print(f"resume: starting over ({reason}): the previous run moved to {_move_aside(output_dir)}", flush=True)
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

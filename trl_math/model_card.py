"""Model cards for pushed runs: base model, recipe and config, validation accuracy, assignment problem.

TRL writes its own card (README.md in the output directory) when a trainer pushes to the Hub; the
mixin appends a trl-math section to it. The expert-iteration trainer, which is not a TRL trainer,
renders the same section with `render_model_card`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from .files import read_jsonl
from .run_log import METRICS_FILE

# Keys that hold validation accuracy, in order of preference.
VALIDATION_KEYS = ("eval_answer_accuracy", "eval_format_accuracy", "eval_answer_reward", "eval_reward", "eval_accuracy", "eval_format_reward")


def describe_model(name_or_path: str | None) -> str:
    """A Hub id as it is; a local directory by its folder name only (no paths of the training machine)."""
    if not name_or_path:
        return "unknown"
    return f"local checkpoint `{Path(name_or_path).name}`" if os.path.isdir(name_or_path) else f"`{name_or_path}`"


def non_default_fields(config) -> dict:
    """The dataclass fields of `config` whose values differ from their declared defaults."""
    changed = {}
    for field in dataclasses.fields(config):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(config, field.name, None)
        if value != default and not field.name.startswith("_") and "token" not in field.name:
            changed[field.name] = value
    return changed


def latest_validation(records: list[dict]) -> dict[str, float]:
    """The last logged value of each validation key present in `records`."""
    found = {}
    for record in records:
        for key in VALIDATION_KEYS:
            if key in record:
                found[key] = record[key]
    return found


def render_model_card(*, problem: str, base_model: str | None, config: dict, validation: dict[str, float],
                      command: str | None = None) -> str:
    """The trl-math section of a model card, as Markdown."""
    lines = ["## trl-math", "", f"Trained with trl-math for CS336 Assignment 5 (Spring 2025), problem **{problem}**.", ""]
    lines.append(f"- Base model: {describe_model(base_model)}")
    if command:
        lines.append(f"- Launched as: `{command}`")
    if validation:
        lines += ["", "| validation metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |" for key, value in validation.items()]
    else:
        lines += ["", "No validation was logged for this run."]
    lines += ["", "<details><summary>Configuration (fields that differ from their defaults)</summary>", "", "```json",
              json.dumps(config, indent=2, sort_keys=True, default=str), "```", "", "</details>", ""]
    return "\n".join(lines)


def launch_command() -> str | None:
    """How this process was started, with the script path relative to the working directory."""
    if not sys.argv or not sys.argv[0]:
        return None
    script = Path(sys.argv[0])
    if script.is_absolute():
        script = Path(os.path.relpath(script)) if script.is_relative_to(Path.cwd()) else Path(script.name)
    return shlex.join([str(script), *sys.argv[1:]])


class AssignmentModelCardMixin:
    """Appends the trl-math section to the card TRL's `create_model_card` writes.

    Subclasses set `assignment_problem`. Validation figures come from the trainer's log history and
    from `metrics.jsonl` when present.
    """

    assignment_problem = "unspecified"

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs):
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags, **kwargs)
        if not self.is_world_process_zero():
            return
        records = list(self.state.log_history)
        metrics = Path(self.args.output_dir) / METRICS_FILE
        if metrics.exists():
            records += read_jsonl(metrics)
        section = render_model_card(
            problem=self.assignment_problem,
            base_model=getattr(self.model.config, "_name_or_path", None),
            config=non_default_fields(self.args),
            validation=latest_validation(records),
            command=launch_command(),
        )
        card = Path(self.args.output_dir) / "README.md"
        card.write_text(card.read_text(encoding="utf-8").rstrip() + "\n\n" + section, encoding="utf-8")

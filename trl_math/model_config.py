"""How the recipes turn TRL's ModelConfig (model, revision, dtype, attention) into the trainers' model loading."""

from __future__ import annotations


def apply_model_config(training_args, model_args) -> None:
    """Fill `training_args.model_init_kwargs` from `model_args`; keys the user already set there win."""
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": getattr(training_args, "trust_remote_code", False),
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }

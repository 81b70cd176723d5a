"""Reward functions by name: the packaged ones, or any `package.module.function` the user provides."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .rewards import question_only_reward_fn, r1_zero_reward_fn

REWARD_FNS: dict[str, Callable] = {"r1_zero": r1_zero_reward_fn, "question_only": question_only_reward_fn}


def resolve_callable(spec: str) -> Callable:
    """The object at a dotted import path `package.module.name`, with an error that names the spec."""
    module_name, _, name = spec.rpartition(".")
    if not module_name:
        raise ValueError(f"{spec!r} is not a dotted path package.module.function")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {spec!r}: {err}") from None
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    return obj


def resolve_reward_fn(spec: str) -> Callable:
    """`reward_fn(response, ground_truth) -> {"format_reward", "answer_reward", "reward"}` for a name or path."""
    return REWARD_FNS[spec] if spec in REWARD_FNS else resolve_callable(spec)

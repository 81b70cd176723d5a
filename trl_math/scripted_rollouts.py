"""GRPO rollouts fixed in advance, through TRL's own `rollout_func` hook: exact, known rollouts for tests and
benchmarks, the same for MathGRPOTrainer and TRL's GRPOTrainer.

`ScriptedRollouts(groups)` is a rollout_func: the k-th time a prompt comes up within one call (a group's k-th
completion), it returns that prompt's k-th scripted completion. Each completion's reward rides along as the
extra field `scripted_reward`, which TRL hands to the reward functions: `scripted_reward` (the reward function)
returns it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class ScriptedCompletion:
    token_ids: list[int]
    reward: float


class ScriptedRollouts:
    """A TRL rollout_func (`GRPOTrainer(..., rollout_func=ScriptedRollouts(groups))`) returning, for each prompt
    text in `groups`, its scripted completions in order, one per occurrence of the prompt within a call."""

    def __init__(self, groups: dict[str, list[ScriptedCompletion]]):
        self.groups = groups

    def __call__(self, prompts: list[str], trainer) -> dict:
        seen: Counter = Counter()
        completions = []
        for prompt in prompts:
            group = self.groups[prompt]
            completions.append(group[seen[prompt] % len(group)])
            seen[prompt] += 1
        tokenizer = trainer.processing_class
        return {
            "prompt_ids": [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts],
            "completion_ids": [list(c.token_ids) for c in completions],
            "logprobs": None,
            "scripted_reward": [c.reward for c in completions],
        }


def scripted_reward(completions, scripted_reward, **kwargs) -> list[float]:
    """The reward scripted for each completion (a TRL reward function, for `ScriptedRollouts`)."""
    return list(scripted_reward)

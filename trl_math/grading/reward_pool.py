"""Batch grading with an assignment-style `reward_fn(response, ground_truth) -> {format_reward, answer_reward,
reward}`: the glue between the graders' process pool and evaluation, validation, filtering and EI.

`grading_pool(reward_fn)` starts worker processes that grade with `reward_fn` under a hard per-item time
limit; `grade` grades a batch with such a pool (or a one-off one); `category` names the math_baseline
category of a graded response.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .pool import GradingPool
from .rewards import question_only_reward_fn

RewardFn = Callable[[str, str], dict[str, float]]

# (format_reward, answer_reward) -> category; the r1_zero grader never gives (0, 1), question_only can't either.
CATEGORIES = {(1, 1): "format1_answer1", (1, 0): "format1_answer0", (0, 0): "format0_answer0", (0, 1): "format0_answer1"}


class RewardGradeFn:
    """GradingPool's per-item function for `reward_fn`; picklable when `reward_fn` is (a module-level function
    or a functools.partial of one)."""

    def __init__(self, reward_fn: RewardFn):
        self.reward_fn = reward_fn

    def __call__(self, response: str, ground_truth: str, **pool_options) -> dict[str, float]:
        return self.reward_fn(response, ground_truth)


def grading_pool(reward_fn: RewardFn) -> GradingPool:
    """A batch grader (worker processes, hard per-item time limit) that grades with `reward_fn`."""
    return GradingPool(grade_fn=RewardGradeFn(reward_fn))


def _format_rule(reward_fn: RewardFn) -> str:
    """Which format rule scores an item that timed out: question_only's for that reward, r1_zero's otherwise."""
    return "question_only" if reward_fn is question_only_reward_fn else "r1_zero"


def grade(reward_fn: RewardFn, responses: Sequence[str], ground_truths: Sequence[str], pool=None) -> list[dict]:
    """Rewards of (response, ground truth) pairs from the batch grader (`pool`, or a one-off pool).

    An item past the pool's time limit gets answer 0 and the format reward of the format rule.
    """
    if pool is None:
        with grading_pool(reward_fn) as own:
            return grade(reward_fn, responses, ground_truths, own)
    return pool.grade(list(responses), [str(t) for t in ground_truths], prompt=_format_rule(reward_fn))


def category(format_reward: float, answer_reward: float) -> str:
    """The math_baseline category of one graded response."""
    return CATEGORIES[(int(format_reward > 0), int(answer_reward > 0))]

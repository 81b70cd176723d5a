"""Reward functions in TRL's signature: ``f(completions, **columns) -> list[float]``.

``GRPOTrainer._calculate_rewards`` calls ``f(prompts=..., completions=..., completion_ids=...,
**dataset_columns, trainer_state=..., log_extra=..., log_metric=...)``; our datasets carry the
answer in the ``ground_truth`` column.  Answer and format are separate functions so that TRL
logs ``rewards/<name>/mean`` for each; the trainer sums them with ``reward_weights``.
Conversational completions (lists of messages) are graded by the last message's content.
"""

from __future__ import annotations

from typing import Any, Sequence

from .course_slow import check_course_slow
from .extract import has_r1_zero_format
from .rewards import question_only_reward_fn, r1_zero_reward_fn

__all__ = [
    "r1_zero_answer_reward",
    "r1_zero_format_reward",
    "question_only_answer_reward",
    "make_trl_reward_funcs",
    "TRLReward",
]


def _text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


class TRLReward:
    """A picklable, named reward callable (TRL logs it as ``rewards/<__name__>``)."""

    def __init__(self, kind: str, prompt: str = "r1_zero", mode: str = "course",
                 fast: bool = True, pool=None, name: str | None = None):
        if kind not in ("answer", "format"):
            raise ValueError("kind must be 'answer' or 'format'")
        if prompt not in ("r1_zero", "question_only"):
            raise ValueError("prompt must be 'r1_zero' or 'question_only'")
        if kind == "answer" and not fast and mode == "course":
            check_course_slow()  # the missing extra is named now, not at the first reward
        self.kind, self.prompt, self.mode, self.fast, self.pool = kind, prompt, mode, fast, pool
        # The assignment's reward is the answer reward; the format reward is logged, not trained on.
        # MathGRPOTrainer reads this when reward_weights is not set.
        self.default_weight = 1.0 if kind == "answer" else 0.0
        suffix = "" if mode == "course" else f"_{mode}"
        self.__name__ = name or (
            f"{prompt}_format_reward" if kind == "format" else f"{prompt}{suffix}_answer_reward"
        )

    def __call__(self, completions: Sequence[Any], ground_truth: Sequence[Any] | None = None,
                 **kwargs: Any) -> list[float]:
        texts = [_text(c) for c in completions]
        if self.kind == "format":
            if self.prompt == "r1_zero":
                return [1.0 if has_r1_zero_format(t) else 0.0 for t in texts]
            truths = ground_truth if ground_truth is not None else [None] * len(texts)
            return [question_only_reward_fn(t, None)["format_reward"] for t, _ in zip(texts, truths)]
        if ground_truth is None:
            raise ValueError(f"{self.__name__} needs the dataset column 'ground_truth'")
        if len(ground_truth) != len(texts):
            raise ValueError("completions and ground_truth differ in length")
        if self.pool is not None:
            results = self.pool.grade(texts, list(ground_truth), prompt=self.prompt,
                                      mode=self.mode, fast=self.fast)
        else:
            fn = r1_zero_reward_fn if self.prompt == "r1_zero" else question_only_reward_fn
            results = [fn(t, gt, self.fast, mode=self.mode) for t, gt in zip(texts, ground_truth)]
        return [float(r["answer_reward"]) for r in results]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["pool"] = None  # processes do not travel; a copy grades in-process
        return state

    def __repr__(self) -> str:
        return f"TRLReward({self.__name__!r}, mode={self.mode!r}, fast={self.fast})"


def r1_zero_answer_reward(completions: Sequence[Any], ground_truth: Sequence[Any], **kwargs: Any) -> list[float]:
    """Course-mode answer reward for r1_zero completions (1.0 right, 0.0 otherwise)."""
    return _R1_ANSWER(completions, ground_truth)


def r1_zero_format_reward(completions: Sequence[Any], ground_truth: Sequence[Any] | None = None,
                          **kwargs: Any) -> list[float]:
    """1.0 iff the completion has ``"</think> <answer>"`` and ``"</answer>"``."""
    return _R1_FORMAT(completions, ground_truth)


def question_only_answer_reward(completions: Sequence[Any], ground_truth: Sequence[Any],
                                **kwargs: Any) -> list[float]:
    """Course-mode answer reward for question_only completions (last ``\\boxed{}``)."""
    return _QO_ANSWER(completions, ground_truth)


_R1_ANSWER = TRLReward("answer", "r1_zero", "course")
_R1_FORMAT = TRLReward("format", "r1_zero", "course")
_QO_ANSWER = TRLReward("answer", "question_only", "course")


def make_trl_reward_funcs(prompt: str = "r1_zero", mode: str = "course", pool=None,
                          fast: bool = True) -> list[TRLReward]:
    """``[answer_reward, format_reward]`` for GRPOTrainer(reward_funcs=...).

    Names: ``r1_zero_answer_reward`` / ``r1_zero_accurate_answer_reward`` (by mode) and
    ``r1_zero_format_reward``; ``question_only_*`` likewise.  Each carries ``default_weight``
    (answer 1.0, format 0.0): MathGRPOTrainer trains on the answer reward alone, as the course does,
    and logs the format reward, unless ``reward_weights`` says otherwise.  ``pool``: a
    ``GradingPool`` for hard per-item time limits.
    """
    return [TRLReward("answer", prompt, mode, fast, pool), TRLReward("format", prompt, mode, fast)]

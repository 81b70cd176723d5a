"""Answer grading for trl-math: course-compatible rewards, an accurate mode, safe and bounded.

* ``r1_zero_reward_fn`` / ``question_only_reward_fn`` - the course's reward functions
  (``mode="course"``, default; ``fast=False`` adds the course's math-verify step, with the
  ``course-slow`` extra) or ``mode="accurate"``.
* ``accurate_reward_fn`` / ``grade_answer`` - the accurate grader for training and analysis.
* ``GradingPool`` / ``grade_batch`` - worker processes with a hard per-item time limit.
* ``r1_zero_answer_reward``, ``r1_zero_format_reward``, ``question_only_answer_reward``,
  ``make_trl_reward_funcs`` - TRL reward-function adapters.

In the calling process no model text reaches eval/exec/sympify/parse_expr: comparisons use our own
bounded parser.  math-verify (``fast=False``) runs only in the grading worker processes, one fresh
process per answer, behind a time limit, a memory limit and an arithmetic-only evaluator
(``math_verify_sandbox``).
"""

from .pool import GradingPool, grade_batch
from .rewards import (
    MODES,
    accurate_reward_fn,
    grade_answer,
    question_only_reward_fn,
    r1_zero_reward_fn,
)
from .trl_rewards import (
    TRLReward,
    make_trl_reward_funcs,
    question_only_answer_reward,
    r1_zero_answer_reward,
    r1_zero_format_reward,
)

__all__ = [
    "GRADING_MODES",
    "GradingPool",
    "TRLReward",
    "accurate_reward_fn",
    "grade_answer",
    "grade_batch",
    "make_trl_reward_funcs",
    "question_only_answer_reward",
    "question_only_reward_fn",
    "r1_zero_answer_reward",
    "r1_zero_format_reward",
    "r1_zero_reward_fn",
]

GRADING_MODES = MODES

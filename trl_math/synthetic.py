"""A seeded synthetic math task with exact answers, for the CPU learning demo and tests.

Problems are sums of two-digit integers ("What is 37+48?"); each comes with a correct r1_zero trace
(" 37+48=85 </think> <answer> 85 </answer>"), the text a model writes after the prompt's
"Assistant: <think>". Rows carry `problem` and `answer` like the course's MATH files, so the same
loaders, prompts and graders serve the demo and real runs.
"""

from __future__ import annotations

import random


def arithmetic_trace(operands: list[int]) -> str:
    """The step-by-step r1_zero completion for a sum: running totals, then the answer tag."""
    steps, total = [], operands[0]
    for operand in operands[1:]:
        steps.append(f"{total}+{operand}={total + operand}")
        total += operand
    return f" {', '.join(steps)} </think> <answer> {total} </answer>"


def make_arithmetic_splits(
    seed: int, sizes: dict[str, int], n_operands: int = 2, low: int = 10, high: int = 99
) -> dict[str, list[dict]]:
    """Disjoint splits of distinct problems, e.g. sizes={"train": 2000, "validation": 100, "test": 200}.

    Each row: {"problem", "answer", "trace"}. The same seed gives the same splits.
    """
    if n_operands < 2:
        raise ValueError(f"n_operands must be >= 2, got {n_operands}")
    available = (high - low + 1) ** n_operands
    wanted = sum(sizes.values())
    if wanted > available // 2:
        raise ValueError(f"asked for {wanted} distinct problems from only {available} ({n_operands} operands in {low}..{high})")
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    splits: dict[str, list[dict]] = {}
    for name, size in sizes.items():
        rows = []
        while len(rows) < size:
            operands = tuple(rng.randint(low, high) for _ in range(n_operands))
            if operands in seen:
                continue
            seen.add(operands)
            rows.append({
                "problem": f"What is {'+'.join(map(str, operands))}?",
                "answer": str(sum(operands)),
                "trace": arithmetic_trace(list(operands)),
            })
        splits[name] = rows
    return splits

"""Scripted reward functions for trainer tests: known verdicts on any text, so a random tiny model earns
some reward. Module-level, so the grading pool's worker processes can import them."""


def even_length_reward(response: str, ground_truth: str) -> dict[str, float]:
    """1 when the response has an even number of characters: about half of all rollouts."""
    reward = float(len(response) % 2 == 0)
    return {"format_reward": reward, "answer_reward": reward, "reward": reward}


def slow_even_length_reward(response: str, ground_truth: str) -> dict[str, float]:
    """even_length_reward, a quarter of a second per response: a signal can arrive while responses are graded."""
    import time

    time.sleep(0.25)
    return even_length_reward(response, ground_truth)

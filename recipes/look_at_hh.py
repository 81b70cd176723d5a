"""Look at Anthropic HH (problem look_at_hh of the assignment's supplement, section 5.2): how many single-turn pairs
each file keeps, then random helpful and harmless pairs, instruction, chosen and rejected response side by side.

    python recipes/look_at_hh.py --hh_sources data/hh [--num_examples 3 --seed 0]
"""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass, field

from trl import TrlParser

from trl_math.supplement.hh import load_hh, sample_pairs


@dataclass
class LookAtHHArguments:
    hh_sources: list[str] = field(
        default_factory=lambda: ["data/hh"],
        metadata={"help": "The folder of the course's four HH files, HH files, or the Hub id Anthropic/hh-rlhf."},
    )
    num_examples: int = field(default=3, metadata={"help": "Pairs shown of each kind, helpful and harmless."})
    seed: int = field(default=0, metadata={"help": "Seed of the draw."})


def main(args: LookAtHHArguments):
    pairs = load_hh(args.hh_sources)
    print(f"{len(pairs)} single-turn pairs: {dict(sorted(Counter(pairs['source']).items()))}")
    for kind in ("helpful", "harmless"):
        for number, pair in enumerate(sample_pairs(pairs, kind, args.num_examples, args.seed), start=1):
            print(f"\n=== {kind} {number} ({pair['source']}) ===")
            for name in ("instruction", "chosen", "rejected"):
                print(f"--- {name}\n" + textwrap.fill(pair[name], width=100, replace_whitespace=False))


# The recipe's arguments, in the order main() takes them (tests/test_docs.py parses documented commands with them).
ARGUMENTS = (LookAtHHArguments,)

if __name__ == "__main__":
    main(*TrlParser(ARGUMENTS).parse_args_and_config())

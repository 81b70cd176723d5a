"""Answer parsers of the zero-shot benchmarks (problems mmlu_baseline and gsm8k_baseline).

- MMLU: the prompt asks for one sentence "The correct answer is _" with the option's letter; the capital
  letter of the first such sentence (the phrase in any case; "is: (B)", "is **B**" and the like accepted),
  or an output that is nothing but a letter ("B", "(B)", "B."). The letter must stand alone: "The correct
  answer is 10000 polyomaviruses." (the course's test), "... is Africa" or "... is a national holiday" give None.
- GSM8K: the last number in the output (the course's rule), thousands separators removed: "-3", "1,234.5"
  -> "1234.5"; a minus glued to a preceding digit or letter is a hyphen ("5-10" ends with "10"). Numbers
  spelled out in words are not numbers: None.
"""

from __future__ import annotations

import re

MMLU_LETTERS = ("A", "B", "C", "D")

_MMLU_SENTENCE = re.compile(r"(?i:correct answer is)\W*?\b([ABCD])\b(?!')")
_MMLU_BARE = re.compile(r"\W*([ABCD])\W*")
_NUMBER = re.compile(r"(?:(?<![\w-])-)?\d+(?:,\d{3})*(?:\.\d+)?")


def parse_mmlu_response(mmlu_example: dict, model_output: str) -> str | None:
    """The option letter ("A".."D") the output gives as its answer, or None when it gives none.

    `mmlu_example` ({subject, question, options, answer}) is the course adapter's argument; the answer is read
    from the output alone.
    """
    sentence = _MMLU_SENTENCE.search(model_output)
    if sentence is not None:
        return sentence.group(1)
    bare = _MMLU_BARE.fullmatch(model_output)
    return bare.group(1) if bare is not None else None


def parse_gsm8k_response(model_output: str) -> str | None:
    """The last number in `model_output` as a string without thousands separators, or None."""
    numbers = _NUMBER.findall(model_output)
    return numbers[-1].replace(",", "") if numbers else None

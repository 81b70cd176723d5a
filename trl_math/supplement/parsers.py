"""Answer parsers of the zero-shot benchmarks (problems mmlu_baseline and gsm8k_baseline).

- MMLU: letters only. The prompt asks for one sentence "The correct answer is _" with the option's letter, and
  the text scores "the letter of the predicted answer"; an output that names an option by its text instead is
  not parsed (None), and so counted among the unparsed generations the problem asks about (as the course's
  test case "The correct answer is 10000 polyomaviruses."). The answer is the capital letter filling the blank
  of the first such sentence that has one (the phrase in any case; "is: (B)", "is **B**" and the like
  accepted), or an output that is nothing but a letter ("B", "(B)", "B."). The letter must stand alone
  ("... is Africa" gives None), and must not be the first word of an option's text: in the course's example,
  whose option B is "A national holiday", "The correct answer is A national holiday." gives None, as does
  "The correct answer is A and D." where an option reads "A and D". Option texts that begin with "I " ("I only",
  "I and III only") never read as letters: I is no option letter.
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


def _opens_an_option_text(text: str, options) -> bool:
    """Whether `text` (the output from a letter on) begins with the first two words of one of `options`, e.g.
    "A national holiday." with the option "A national holiday": the letter is then that text's first word."""
    said = " ".join(text.split()[:2]).casefold()
    return any(len(option.split()) > 1 and " ".join(option.split()[:2]).casefold() == said for option in options)


def parse_mmlu_response(mmlu_example: dict, model_output: str) -> str | None:
    """The option letter ("A".."D") the output names as its answer, or None when it names none (module doc).

    `mmlu_example` ({subject, question, options, answer}) is the course adapter's argument; its `options` tell a
    letter from the first word of an option's text. The answer letter is not looked at.
    """
    options = mmlu_example.get("options") or ()
    for sentence in _MMLU_SENTENCE.finditer(model_output):
        if not _opens_an_option_text(model_output[sentence.start(1):], options):
            return sentence.group(1)
    bare = _MMLU_BARE.fullmatch(model_output)
    return bare.group(1) if bare is not None else None


def parse_gsm8k_response(model_output: str) -> str | None:
    """The last number in `model_output` as a string without thousands separators, or None."""
    numbers = _NUMBER.findall(model_output)
    return numbers[-1].replace(",", "") if numbers else None

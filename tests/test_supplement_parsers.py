"""parse_mmlu_response and parse_gsm8k_response on outputs in the supplement's prompt formats; the supplement's
public names."""

from __future__ import annotations

import subprocess
import sys

import pytest

import trl_math

from trl_math.supplement.parsers import parse_gsm8k_response, parse_mmlu_response

# The course's fixture example (tests of run_parse_mmlu_response in stanford-cs336/assignment5-alignment).
VIROLOGY = {
    "subject": "virology",
    "question": "How many human polyomaviruses are known at present?",
    "options": ["100", "1", "10", "unknown"],
    "answer": "A",
}
# The supplement's example (section 2.1): option B's text begins with the word "A".
GEOGRAPHY = {
    "subject": "high_school_geography",
    "question": "Which of the following is a centrifugal force in a country?",
    "options": [
        "Religious differences", "A national holiday", "An attack by another country", "A charismatic national leader",
    ],
    "answer": "A",
}
# Rows of the MMLU test split: an option whose text is made of letters, options that begin with "I ".
ASTRONOMY = {
    "subject": "astronomy",
    "question": "Which of the following is/are true?",
    "options": ["Titan is the only outer solar system moon with a thick atmosphere",
                "Titan is the only outer solar system moon with evidence for recent geologic activity",
                "Titan's atmosphere is composed mostly of hydrocarbons", "A and D"],
    "answer": "D",
}
BIOLOGY = {
    "subject": "college_biology",
    "question": "A cell nucleus contains which of the following?\nI. DNA\nII. Protein\nIII. RNA",
    "options": ["I only", "II only", "III only", "I, II, and III"],
    "answer": "D",
}


@pytest.mark.parametrize(
    ("example", "output", "letter"),
    [
        # the course's own case
        (VIROLOGY, "The correct answer is B. There is only one human polyomavirus known at present, which is the BK "
                   "virus.", "B"),
        (GEOGRAPHY, "The correct answer is A", "A"),
        (GEOGRAPHY, "The correct answer is D.\n\n# Query:", "D"),
        (GEOGRAPHY, "the correct answer is: (C)", "C"),
        (GEOGRAPHY, "The correct answer is **B**, a national holiday.", "B"),
        (GEOGRAPHY, "The correct answer is B. A national holiday", "B"),  # the letter, then the option's text
        (GEOGRAPHY, "The correct answer is A, religious differences.", "A"),
        (GEOGRAPHY, "Religious differences divide people. The correct answer is A, religious differences.", "A"),
        (GEOGRAPHY, "The correct answer is C. (Not D: the correct answer is never D here.)", "C"),  # the first sentence
        (GEOGRAPHY, "The correct answer is A national holiday, so the correct answer is B.", "B"),  # the first letter
        (ASTRONOMY, "The correct answer is D: A and D.", "D"),
        (ASTRONOMY, "The correct answer is A.", "A"),
        (BIOLOGY, "The correct answer is D. I, II, and III", "D"),
        (GEOGRAPHY, "B", "B"),
        (GEOGRAPHY, " (D) ", "D"),
        (GEOGRAPHY, "C.", "C"),
    ],
)
def test_mmlu_letters(example, output, letter):
    assert parse_mmlu_response(example, output) == letter


@pytest.mark.parametrize(
    ("example", "output"),
    [
        (VIROLOGY, "The correct answer is 10000 polyomaviruses."),  # the course's own unparseable case
        (GEOGRAPHY, "The correct answer is Africa."),  # a word that starts with a letter of the options
        (GEOGRAPHY, "The correct answer is a national holiday."),  # option text, not its letter
        (GEOGRAPHY, "The correct answer is A national holiday."),  # the text of option B, whose first word is "A"
        (GEOGRAPHY, "The correct answer is **A national holiday**."),
        (GEOGRAPHY, "The correct answer is A charismatic national leader"),  # option D's text
        (GEOGRAPHY, "The correct answer is E."),
        (GEOGRAPHY, "A national holiday"),  # the text of option B alone
        (ASTRONOMY, "The correct answer is A and D."),  # the text of option D, not the letter A
        (BIOLOGY, "The correct answer is I only."),  # option texts that begin with "I "
        (BIOLOGY, "The correct answer is I, II, and III."),
        (BIOLOGY, "I only"),
        (GEOGRAPHY, "I am not sure which one is correct."),
        (GEOGRAPHY, ""),
    ],
)
def test_mmlu_outputs_that_name_no_letter_are_none(example, output):
    assert parse_mmlu_response(example, output) is None


@pytest.mark.parametrize(
    ("output", "number"),
    [
        # the course's own case
        ("Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May.", "72"),
        ("She sold 15 clips.", "15"),  # the text's example
        ("The total is 1,234 dollars.", "1234"),
        ("He ends up with -3 apples.", "-3"),
        ("It costs $12.50 per hour, so 8 hours cost $100.", "100"),
        ("She pays 0.75 each.", "0.75"),
        ("The answer is 42.", "42"),  # the sentence's full stop is not a decimal point
        ("Somewhere between 5-10 minutes.", "10"),  # a hyphen between numbers is not a minus sign
        ("72\n\n# Query: next question", "72"),
    ],
)
def test_gsm8k_last_number(output, number):
    assert parse_gsm8k_response(output) == number


@pytest.mark.parametrize(
    "output",
    [
        # the course's own case
        "Natalia sold twenty-four clips in May. Thus, Natalia sold seventy-two clips altogether in April and May.",
        "I don't know.",
        "",
    ],
)
def test_gsm8k_without_a_number_is_none(output):
    assert parse_gsm8k_response(output) is None


SUPPLEMENT_NAMES = [
    "parse_mmlu_response", "parse_gsm8k_response", "InstructionDataArguments", "PackedSFTDataset", "get_packed_sft_dataset",
    "iterate_batches", "InstructionTuningConfig", "InstructionTuningTrainer", "HHDataArguments", "load_hh",
    "compute_per_instance_dpo_loss", "AlpacaDPOConfig", "AlpacaDPOTrainer",
]


def test_supplement_names_are_public_and_the_parsers_light():
    for name in SUPPLEMENT_NAMES:
        assert name in trl_math.__all__ and getattr(trl_math, name).__module__.startswith("trl_math.supplement."), name
    # The course's test adapters import the parsers without paying for trl and transformers.
    probe = ("import sys, trl_math; trl_math.parse_mmlu_response; "
             "print(sorted({'trl', 'transformers', 'torch'} & set(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "['torch']", run.stdout + run.stderr

"""Packed instruction-tuning data with Llama 3's tokenizer: the Alpaca documents, the packing, iterate_batches."""

from __future__ import annotations

import gzip
import itertools
import json
import math

import pytest
import torch

from conftest import SHARED_DIR
from trl_math.supplement.alpaca import alpaca_prompt, format_alpaca, load_alpaca_template
from trl_math.supplement.instruction_data import (
    InstructionDataArguments,
    PackedSFTDataset,
    get_packed_sft_dataset,
    iterate_batches,
    load_instruction_examples,
)

BOS, EOS = 128000, 128001
EXAMPLES = [
    {"prompt": "Name three primary colors.", "response": "Red, yellow and blue."},
    {"prompt": "Translate 'merci' into English.", "response": "Thank you."},
    {"prompt": "Write {x} with its braces.", "response": "{x}"},
    {"prompt": "What is 12 * 12?", "response": "12 * 12 = 144.\n\nThe answer is 144."},
    {"prompt": "Give a one-word synonym of 'quick'.", "response": "Fast."},
    {"prompt": "Is the sky green?", "response": "No, on a clear day the sky is blue."},
]


def course_text(prompt: str, response: str) -> str:
    """The supplement's Alpaca template, written out from the text (section 3.2.1)."""
    return (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        f"### Instruction:\n{prompt}\n\n### Response:\n{response}"
    )


def expected_stream(tokenizer, examples) -> list[int]:
    """BOS, the formatted text, EOS for each document, concatenated."""
    stream = []
    for row in examples:
        stream += [BOS, *tokenizer.encode(course_text(row["prompt"], row["response"]), add_special_tokens=False), EOS]
    return stream


def write_jsonl(path, rows):
    text = "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def documents(stream: list[int]) -> list[tuple[int, ...]]:
    """The stream cut after each EOS."""
    docs, current = [], []
    for token in stream:
        current.append(token)
        if token == EOS:
            docs.append(tuple(current))
            current = []
    return docs


def test_packaged_prompts_are_the_course_files():
    reference = SHARED_DIR / "reference" / "prompts"
    if not reference.is_dir():
        pytest.skip(f"the course's prompt files are not at {reference} (they live in ../shared)")
    from importlib import resources

    for name in ("alpaca_sft.prompt", "zero_shot_system_prompt.prompt"):
        packaged = resources.files("trl_math").joinpath("prompts", name).read_bytes()
        assert packaged == (reference / name).read_bytes(), name
    # The template in use is the file less its final newline, as the course's expected token ids show.
    assert load_alpaca_template() == (reference / "alpaca_sft.prompt").read_text(encoding="utf-8")[:-1]


def test_alpaca_text_is_the_template_filled_in():
    assert format_alpaca("Say {hi}.", "Hi!") == course_text("Say {hi}.", "Hi!")
    assert alpaca_prompt("Say {hi}.") + "Hi!" == course_text("Say {hi}.", "Hi!")
    assert load_alpaca_template().endswith("### Response:\n{response}")


def test_packing_reproduces_a_hand_computed_stream(llama_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", EXAMPLES)
    stream = expected_stream(llama_tokenizer, EXAMPLES)
    m = 16
    assert (len(stream) - 1) % m != 0  # a short final chunk exists, and must be dropped
    dataset = get_packed_sft_dataset(llama_tokenizer, path, m, shuffle=False)

    assert len(dataset) == (len(stream) - 1) // m
    for i in range(len(dataset)):
        example = dataset[i]
        assert example["input_ids"].dtype == example["labels"].dtype == torch.long
        assert example["input_ids"].tolist() == stream[i * m : (i + 1) * m]
        assert example["labels"].tolist() == stream[i * m + 1 : (i + 1) * m + 1]
    assert dataset[0]["input_ids"][0].item() == BOS
    last_label_position = len(dataset) * m  # the tail after it does not fill a chunk
    assert 0 < len(stream) - 1 - last_label_position < m


def test_chunk_count_at_the_boundaries(llama_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", EXAMPLES[:2])
    n = len(expected_stream(llama_tokenizer, EXAMPLES[:2]))
    one = PackedSFTDataset(llama_tokenizer, path, n - 1, shuffle=False)  # labels end on the last token
    assert len(one) == 1 and one[0]["labels"][-1].item() == EOS
    assert len(PackedSFTDataset(llama_tokenizer, path, (n - 1) // 2, shuffle=False)) == 2
    with pytest.raises(ValueError, match="no sequence of seq_length"):
        PackedSFTDataset(llama_tokenizer, path, n, shuffle=False)  # n inputs leave no next token for the last one


def test_indexing_stops_a_for_loop_and_handles_negative_indices(llama_tokenizer, tmp_path):
    dataset = get_packed_sft_dataset(llama_tokenizer, write_jsonl(tmp_path / "sft.jsonl", EXAMPLES), 16, shuffle=False)
    n = len(dataset)
    # islice bounds the loop, so a __getitem__ that never raised would fail here instead of running forever.
    seen = list(itertools.islice((example for example in dataset), n + 5))
    assert len(seen) == n
    assert torch.equal(dataset[-1]["input_ids"], dataset[n - 1]["input_ids"])
    assert torch.equal(dataset[-n]["labels"], dataset[0]["labels"])
    for bad in (n, n + 1, -n - 1):
        with pytest.raises(IndexError):
            dataset[bad]
    with pytest.raises(TypeError):
        dataset[1.5]


def test_shuffle_reorders_whole_documents_with_a_seed(llama_tokenizer, tmp_path):
    rows = [{"prompt": f"Question number {i}?", "response": f"Answer number {i}."} for i in range(12)]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    m = 8

    def stream(dataset):
        return [t for i in range(len(dataset)) for t in dataset[i]["input_ids"].tolist()]

    plain = stream(PackedSFTDataset(llama_tokenizer, path, m, shuffle=False))
    assert plain == expected_stream(llama_tokenizer, rows)[: len(plain)]
    shuffled = [stream(PackedSFTDataset(llama_tokenizer, path, m, shuffle=True, seed=seed)) for seed in (0, 0, 1)]
    assert shuffled[0] == shuffled[1] != shuffled[2]
    assert shuffled[0] != plain and len(shuffled[0]) == len(plain)
    # Every complete document of a shuffled stream is one of the examples, each at most once.
    whole = set(documents(expected_stream(llama_tokenizer, rows)))
    for order in shuffled:
        docs = documents(order)[:-1] if order[-1] != EOS else documents(order)
        assert len(docs) == len(set(docs)) >= 10 and set(docs) <= whole


def test_gzip_and_plain_files_pack_alike(llama_tokenizer, tmp_path):
    plain = PackedSFTDataset(llama_tokenizer, write_jsonl(tmp_path / "a.jsonl", EXAMPLES), 16, shuffle=False)
    packed = PackedSFTDataset(llama_tokenizer, write_jsonl(tmp_path / "a.jsonl.gz", EXAMPLES), 16, shuffle=False)
    assert torch.equal(plain.tokens, packed.tokens)


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({"prompt": "Hi"}, r":3: field 'response' is missing or not a string"),
        ({"prompt": 7, "response": "x"}, r":3: field 'prompt' is missing or not a string"),
        ("{not json", r":3: invalid JSON"),
        ("[1, 2]", r":3: expected a JSON object, got list"),
    ],
)
def test_bad_rows_name_the_file_line_and_field(tmp_path, bad_row, message):
    for name in ("bad.jsonl", "bad.jsonl.gz"):
        path = write_jsonl(tmp_path / name, [EXAMPLES[0], EXAMPLES[1], bad_row])
        with pytest.raises(ValueError, match=str(path).replace(".", r"\.") + message):
            load_instruction_examples(path)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_instruction_examples(tmp_path / "absent.jsonl.gz")
    with pytest.raises(ValueError, match="holds no instruction-tuning examples"):
        load_instruction_examples(write_jsonl(tmp_path / "empty.jsonl", []))


def test_iterate_batches_covers_every_chunk_once(llama_tokenizer, tmp_path):
    rows = EXAMPLES * 3
    dataset = PackedSFTDataset(llama_tokenizer, write_jsonl(tmp_path / "sft.jsonl", rows), 8, shuffle=True)
    n, batch_size = len(dataset), 5
    assert n % batch_size != 0
    chunks = sorted(tuple(dataset[i]["input_ids"].tolist()) + tuple(dataset[i]["labels"].tolist()) for i in range(n))

    batches = iterate_batches(dataset, batch_size, shuffle=True, seed=0)
    assert len(batches) == math.ceil(n / batch_size)
    seen = []
    for k, batch in enumerate(batches):
        size = batch_size if k < len(batches) - 1 else n - batch_size * (len(batches) - 1)
        assert batch["input_ids"].shape == batch["labels"].shape == (size, 8)
        assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
        seen += [tuple(ids) + tuple(labels) for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist())]
    assert sorted(seen) == chunks

    ordered = list(iterate_batches(dataset, batch_size, shuffle=False))
    in_order = torch.stack([dataset[i]["input_ids"] for i in range(n)])
    assert torch.equal(torch.cat([b["input_ids"] for b in ordered]), in_order)
    first, again = (next(iter(iterate_batches(dataset, batch_size, shuffle=True, seed=3))) for _ in range(2))
    assert torch.equal(first["input_ids"], again["input_ids"])


def test_data_arguments_pack_train_shuffled_and_eval_in_order(llama_tokenizer, tmp_path):
    rows = [{"q": f"Question {i}?", "a": f"Answer {i}."} for i in range(10)]
    path = write_jsonl(tmp_path / "train.jsonl.gz", rows)
    args = InstructionDataArguments(train_source=str(path), eval_source=str(path), prompt_field="q", response_field="a",
                                    seq_length=8)
    train, validation = args.load_packed("train", llama_tokenizer, seed=5), args.load_packed("eval", llama_tokenizer, seed=5)
    expected = expected_stream(llama_tokenizer, [{"prompt": r["q"], "response": r["a"]} for r in rows])
    assert validation.tokens.tolist() == expected
    assert train.tokens.tolist() != expected and sorted(train.tokens.tolist()) == sorted(expected)
    with pytest.raises(ValueError, match="eval_source: required"):
        InstructionDataArguments(train_source=str(path)).load_packed("eval", llama_tokenizer, seed=0)

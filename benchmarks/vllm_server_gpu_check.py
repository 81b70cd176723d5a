"""GRPO against a vLLM server on its own GPU, weights synced over NCCL: the path CPU tests cannot run.

    python benchmarks/vllm_server_gpu_check.py            # a machine with 2 GPUs, vLLM installed (trl-math[vllm])

The assignment's layout with a tiny local model (no download): `vllm serve` on GPU 0 (started as TRL's
`trl vllm-serve` starts it: NCCL weight transfer, processed log-probs), recipes/grpo.py in server mode on GPU 1
with TRL's vllm_importance_sampling_correction on, a high learning rate and a reward with spread. TRL then logs
`sampling/sampling_logp_difference/mean`, how far the server's log-probs of the sampled tokens are from the
policy's. With the weights synced after each step it stays at numeric noise; the negative control (the same
run with `VLLMGeneration.sync_weights` disabled) must jump once the policy moves. The check also asserts that
the rollouts the rewards graded end at the stop string. Prints the figures, writes
benchmarks/results/vllm_server_gpu_check.json, and exits 1 if a check fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REWARDS = "def length_reward(completions, **kwargs):\n    return [(len(t) % 7) / 6.0 for t in completions]\n"
WITHOUT_SYNC = ("import runpy, sys; from trl.generation.vllm_generation import VLLMGeneration; "
                "VLLMGeneration.sync_weights = lambda self: None; sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, port: int) -> subprocess.Popen:
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    command = build_command(ScriptArguments(model=str(model), host="127.0.0.1", port=port, dtype="float32",
                                            gpu_memory_utilization=0.3, max_model_len=1024, enforce_eager=True))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "VLLM_SERVER_DEV_MODE": "1"}
    server = subprocess.Popen(command, env=env, start_new_session=True)
    deadline = time.monotonic() + 600
    while True:
        if server.poll() is not None:
            raise RuntimeError("the vLLM server exited while starting")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                return server
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the vLLM server did not start in 10 minutes") from None
            time.sleep(3)


def run_grpo(tmp: Path, port: int, output_dir: Path, sync: bool) -> list[dict]:
    recipe = [str(REPO / "recipes" / "grpo.py"), "--config", str(REPO / "recipes" / "configs" / "grpo" / "tiny_cpu.yaml"),
              "--model_name_or_path", str(tmp / "model"), "--train_source", str(tmp / "train.jsonl"),
              "--eval_source", str(tmp / "train.jsonl"), "--output_dir", str(output_dir), "--use_cpu", "false",
              "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", "127.0.0.1",
              "--vllm_server_port", str(port), "--vllm_importance_sampling_correction", "true",
              "--reward_funcs", "rewards_for_check.length_reward", "--learning_rate", "0.01", "--max_steps", "6",
              "--stop_string", "e", "--min_new_tokens", "0", "--eval_strategy", "no"]
    command = [sys.executable, *(recipe if sync else ["-c", WITHOUT_SYNC, *recipe])]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "1", "PYTHONPATH": f"{tmp}{os.pathsep}{REPO}"}
    subprocess.run(command, env=env, check=True, cwd=REPO)
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def main() -> int:
    from trl_math.tiny_models import save_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_tiny_checkpoint(tmp / "model", hidden_size=128, num_attention_heads=2, num_key_value_heads=2, seed=0)
        (tmp / "rewards_for_check.py").write_text(REWARDS)
        (tmp / "train.jsonl").write_text("".join(
            json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(32)))
        port = free_port()
        server = start_server(tmp / "model", port)
        try:
            synced = run_grpo(tmp, port, tmp / "synced", sync=True)
            rollouts = [json.loads(line) for line in (tmp / "synced" / "rollouts" / "rank0.jsonl").read_text().splitlines()]
            server.terminate()
            server.wait(timeout=120)
            server = start_server(tmp / "model", port)  # the control starts from the initial weights again
            stale = run_grpo(tmp, port, tmp / "stale", sync=False)
        finally:
            server.terminate()
            server.wait(timeout=120)
    key = "sampling/sampling_logp_difference/mean"
    synced_diff = [m[key] for m in synced if key in m]
    stale_diff = [m[key] for m in stale if key in m]
    cut = all("e" not in r["completion"][:-1] for r in rollouts)
    result = {
        "sampling_logp_difference_mean_synced": synced_diff,
        "sampling_logp_difference_mean_without_sync": stale_diff,
        "checks": {
            "synced_stays_at_noise (< 0.01)": max(synced_diff) < 0.01,
            "without_sync_jumps (> 0.1 after step 1)": min(stale_diff[1:]) > 0.1,
            "rollouts_cut_at_stop_string": cut,
        },
    }
    print(json.dumps(result, indent=2))
    out = REPO / "benchmarks" / "results" / "vllm_server_gpu_check.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

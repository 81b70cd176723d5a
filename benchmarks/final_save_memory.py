"""What the FSDP final save costs in memory: each process's resident memory while the full weights are gathered
(accelerate's `get_state_dict`, as trl_math.model_saving.FullModelSaveMixin gathers them) and the main process
writes them with `save_pretrained`, against the model's size.

A Qwen2-shaped model of --hidden/--layers/--vocab (random weights, float32) is sharded with FSDP2 over 2 processes
and saved; a thread samples each process's resident memory every 5 ms. Writes
benchmarks/results/final_save_memory.json.

    python benchmarks/final_save_memory.py [--hidden 1024 --layers 8 --vocab 32768]

On a machine without GPUs it launches 2 CPU processes (gloo) through the tests' FSDP shim (tests/engines_cpu.py),
with accelerate_configs/fsdp.yaml's settings and mixed precision off; with GPUs, plain accelerate and fsdp.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "final_save_memory.json"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The highest resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.peak, self._done = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def worker(args) -> None:
    import torch
    from accelerate import Accelerator
    from transformers import Qwen2Config, Qwen2ForCausalLM

    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # on CPU: gloo processes, FSDP kept by the shim
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 128, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = accelerator.prepare(Qwen2ForCausalLM(config))
    parameters = sum(p.numel() for p in model.parameters())  # global sizes: DTensors report the full shape
    largest = max(p.numel() for p in model.parameters()) * 4
    gc_collect_and_settle()
    accelerator.wait_for_everyone()
    before = rss_bytes()
    with PeakRss() as peak:
        state_dict = accelerator.get_state_dict(model)  # every process; the weights arrive on the main process
        held = sum(t.numel() * t.element_size() for t in state_dict.values())  # save_pretrained empties it
        if accelerator.is_main_process:
            model.save_pretrained(Path(args.out, "model"), state_dict=state_dict)
        del state_dict
    accelerator.wait_for_everyone()
    row = {"process": accelerator.process_index, "distributed_type": str(accelerator.distributed_type).split(".")[-1],
           "parameters": parameters, "model_bytes_float32": parameters * 4,
           "largest_parameter_bytes": largest, "state_dict_bytes": held,
           "rss_before_bytes": before, "peak_rss_added_bytes": peak.peak - before,
           "peak_added_over_model": round((peak.peak - before) / (parameters * 4), 3)}
    if torch.cuda.is_available():
        row["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    Path(args.out, f"memory-rank{accelerator.process_index}.json").write_text(json.dumps(row))
    accelerator.end_training()


def gc_collect_and_settle() -> None:
    import gc

    gc.collect()
    time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        config = yaml.safe_load((ROOT / "accelerate_configs" / "fsdp.yaml").read_text())
        gpus = torch.cuda.device_count() >= 2
        if not gpus:
            config["mixed_precision"] = "no"
        config_file = Path(tmp, "fsdp.yaml")
        config_file.write_text(yaml.safe_dump(config))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        shim = [] if gpus else [str(ROOT / "tests" / "engines_cpu.py")]
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
                   "--main_process_port", str(port), *shim, str(Path(__file__).resolve()), "--worker", "--out", tmp,
                   "--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab)]
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        rows = [json.loads(Path(tmp, f"memory-rank{k}.json").read_text()) for k in (0, 1)]
    result = {"command": "python benchmarks/final_save_memory.py " + " ".join(sys.argv[1:]),
              "device": "cuda" if gpus else "cpu", "date": time.strftime("%Y-%m-%d"), "processes": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"process {row['process']} ({row['distributed_type']}): model {row['model_bytes_float32'] / 2**20:.0f} MiB "
              f"float32 (largest parameter {row['largest_parameter_bytes'] / 2**20:.0f} MiB), gathered state dict "
              f"{row['state_dict_bytes'] / 2**20:.0f} MiB, peak resident memory added "
              f"{row['peak_rss_added_bytes'] / 2**20:.0f} MiB ({row['peak_added_over_model']} x the model)")


if __name__ == "__main__":
    main()

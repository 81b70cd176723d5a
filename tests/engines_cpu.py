"""Run a script under accelerate's FSDP or DeepSpeed on CPU processes (gloo), with the test-side accommodations
these engines need there, and report which engine really wrapped the model.

    accelerate launch --config_file accelerate_configs/fsdp.yaml --mixed_precision no ... \
        tests/engines_cpu.py [--report DIR] [--fake-hub DIR] recipes/grpo.py --config ... (the script's arguments)

- FSDP on CPU (`keep_fsdp_on_cpu`): accelerate turns FSDP on only for GPU-type setups; with `use_cpu` (or no GPU)
  its state is MULTI_CPU and an FSDP config silently trains as plain DDP. The shim promotes that state to FSDP with
  the plugin accelerate built from the config, exactly as accelerate does for GPU setups, so FSDP2's `fully_shard`
  runs over gloo.
- DeepSpeed on CPU (`skip_deepspeed_shm_op`): DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce op
  when its communication backend starts (about 90 s on 2 cores). Only its inference all-reduce uses that op; ZeRO
  training communicates through torch.distributed (gloo here), so the op is not built. DeepSpeed needs no other
  change: launched with `use_cpu: false` it finds no GPU, picks its CPU accelerator and gloo.
- `--report DIR`: every process writes DIR/engine-rank<k>.json once accelerate has prepared the model: the
  accelerate distributed type, the process's global and local index, the wrapped model's class, the class of its
  parameters and their DTensor placements, DeepSpeed's ZeRO stage. A test reads it to fail when an engine silently fell back to DDP.
- `--fake-hub DIR`: the Hub (unreachable here) is tests/fake_hub.py's FakeHfApi, which writes what is pushed to
  DIR/<repo_id>/.

The script it runs may itself be a runner (tests/vllm_cpu.py), which then runs the recipe.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vllm_cpu import run_as_main  # tests/, the folder of this script


def keep_fsdp_on_cpu() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    build = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        build(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # accelerate's own promotion for GPU setups (AcceleratorState.__init__), on CPU
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def skip_deepspeed_shm_op() -> None:
    import importlib

    try:
        backend = importlib.import_module("deepspeed.comm.torch")  # `import ... as` would bind deepspeed.comm.torch, torch
    except ImportError:
        return
    backend.build_shm_op = lambda: None


def describe(model, accelerator) -> dict:
    """What wraps `model` after accelerate prepared it."""
    parameter = next(model.parameters())
    engine = type(model)
    report = {
        "distributed_type": str(accelerator.distributed_type).split(".")[-1],
        "process_index": accelerator.process_index,
        "local_process_index": accelerator.local_process_index,
        "num_processes": accelerator.num_processes,
        "model_class": engine.__name__,
        "model_bases": [cls.__name__ for cls in engine.__mro__],
        "parameter_class": type(parameter).__name__,
        "placements": [str(p) for p in getattr(parameter, "placements", ())],
    }
    if hasattr(model, "zero_optimization_stage"):
        report["zero_stage"] = model.zero_optimization_stage()
    return report


def report_engine(directory: Path) -> None:
    import torch
    from accelerate import Accelerator

    prepare = Accelerator.prepare

    def prepared(self, *args, **kwargs):
        result = prepare(self, *args, **kwargs)
        for obj in result if isinstance(result, (list, tuple)) else (result,):
            if isinstance(obj, torch.nn.Module) and any(True for _ in obj.parameters()):
                directory.mkdir(parents=True, exist_ok=True)
                path = directory / f"engine-rank{self.process_index}.json"
                path.write_text(json.dumps(describe(obj, self)))
                break
        return result

    Accelerator.prepare = prepared


def fake_hub(directory: Path) -> None:
    import transformers.utils.hub as hub

    from fake_hub import FakeHfApi

    hub._hf_api = FakeHfApi(root=directory)


def main() -> None:
    args = sys.argv[1:]
    options = {"--report": report_engine, "--fake-hub": fake_hub}
    while args and args[0] in options:
        options[args[0]](Path(args[1]))
        args = args[2:]
    keep_fsdp_on_cpu()
    skip_deepspeed_shm_op()
    run_as_main(args)


if __name__ == "__main__":
    main()

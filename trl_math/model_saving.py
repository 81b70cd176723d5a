"""The model a run leaves: `save_model` writes one that `from_pretrained` loads, under every engine.

transformers' Trainer writes the model of an FSDP run only when the FSDP plugin's state-dict type is
FULL_STATE_DICT. Under SHARDED_STATE_DICT (accelerate_configs/fsdp.yaml, and accelerate's default) its
`save_model` writes nothing, and a checkpoint holds only the shards (`pytorch_model_fsdp_0/*.distcp`, the optimizer's
too), without config.json: a run would end with no model in output_dir, and push none to the Hub.

`FullModelSaveMixin` keeps Trainer's behaviour wherever it writes a model (no engine, DDP, DeepSpeed, FSDP with
FULL_STATE_DICT) and, under FSDP with any other state-dict type:
- `save_model(output_dir)` outside a checkpoint (the recipe's final save, and `push_to_hub`, which saves output_dir
  before uploading it) gathers the full weights and writes config.json, model.safetensors and the tokenizer. Every
  process must call it, as every process calls Trainer's: gathering is collective. accelerate's `get_state_dict`
  (torch's `get_model_state_dict`, full_state_dict and cpu_offload) all-gathers one parameter at a time on the
  accelerators and keeps it, on CPU, on the main process only. The main process's CPU memory so holds the whole
  model once, in the dtype FSDP keeps the sharded parameters in (float32 under mixed precision), plus a second copy
  of a tied embedding; for Qwen2.5-Math-1.5B about 6.6 GiB, until the save ends. The other processes keep nothing,
  and each accelerator holds a gathered parameter or two at a time (benchmarks/final_save_memory.py);
- a checkpoint keeps FSDP's sharded files, written by each process for its own shard (cheap, and what a resumed run
  loads), plus config.json and the tokenizer, so that it says which model it holds.
"""

from __future__ import annotations

import os


class FullModelSaveMixin:
    """Trainer mixin: a final save that `from_pretrained` loads whatever the FSDP state-dict type (module doc)."""

    _saving_checkpoint = False

    @property
    def saves_sharded_model(self) -> bool:
        """Whether Trainer's own `save_model` would write no model: FSDP without FULL_STATE_DICT."""
        return self.is_fsdp_enabled and "FULL_STATE_DICT" not in str(self.accelerator.state.fsdp_plugin.state_dict_type)

    def _save_checkpoint(self, model, trial) -> None:
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self.saves_sharded_model:
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self._saving_checkpoint:  # the shards follow (Trainer's _save_optimizer_and_scheduler): name their model
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                self.accelerator.unwrap_model(self.model).config.save_pretrained(output_dir)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
            return
        self._save(output_dir, state_dict=self.accelerator.get_state_dict(self.model))
        if self.args.push_to_hub and not _internal_call:  # as Trainer.save_model
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

"""MathGRPOTrainer on scripted rollouts (trl_math.scripted_rollouts): known prompt lengths, completion lengths and
rewards, for the length-aware batching tests. Runs in-process, or as a script under `accelerate launch`:

    accelerate launch --multi_gpu --num_processes 2 tests/scripted_grpo.py CHECKPOINT OUT_PREFIX [overrides as JSON]

which writes OUT_PREFIX.rank<k>.pt on each process: the gradients of every optimizer step (all-reduced) and the
rows of each micro-batch this process forwarded.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from trl_math.grpo_config import MathGRPOConfig
from trl_math.grpo_trainer import MathGRPOTrainer
from trl_math.scripted_rollouts import ScriptedCompletion, ScriptedRollouts, scripted_reward

MAX_COMPLETION = 16

# (prompt tokens, rewards, completion tokens) of each group of 8: mixed prompt lengths, one maximal completion,
# a group whose advantages are all exactly 0 (rewards 1), one whose equal rewards of 0.3 get tiny nonzero
# advantages from float round-off (kept), and one with exact zeros among nonzero advantages and raw rewards.
GROUPS = (
    (3, (1, 0, 0, 1, 0, 1, 1, 0), (2, MAX_COMPLETION, 5, 9, 1, 12, 7, 3)),
    (12, (1,) * 8, (4, 8, 2, 6, 11, 3, 9, 5)),
    (6, (0.3,) * 8, (7, 1, 13, 4, 2, 10, 6, 8)),
    (9, (0, 1, 0.5, 0.5, 0, 1, 0.5, 0.5), (5, 3, 15, 2, 8, 4, 1, 14)),
)
# Two groups, one per process when two processes share a rollout batch of 16: the one with rewards 1 leaves its
# process nothing to forward.
TWO_GROUPS = (GROUPS[3], GROUPS[1])


def scripted_groups(tokenizer, groups=GROUPS, seed: int = 0) -> dict[str, list[ScriptedCompletion]]:
    """Prompt text -> its 8 scripted completions. A prompt of n digits is n tokens (Qwen's pre-tokenization splits
    digits); completions are random tokens other than EOS."""
    rng = random.Random(seed)
    vocabulary = [i for i in range(len(tokenizer)) if i not in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
    script = {}
    for prompt_tokens, rewards, lengths in groups:
        prompt = "".join(rng.choice("0123456789") for _ in range(prompt_tokens))
        assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == prompt_tokens
        script[prompt] = [ScriptedCompletion([rng.choice(vocabulary) for _ in range(n)], float(r))
                          for r, n in zip(rewards, lengths)]
    return script


def config(output_dir, **overrides) -> MathGRPOConfig:
    settings = dict(
        output_dir=str(output_dir), bf16=False, use_cpu=True, report_to="none", eval_strategy="no", save_strategy="no",
        log_completions=False, rollout_batch_size=32, group_size=8, train_batch_size=32, gradient_accumulation_steps=8,
        max_completion_length=MAX_COMPLETION, stop_string=None, min_new_tokens=1, max_steps=1,
        max_grad_norm=1e9, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    return MathGRPOConfig(**(settings | overrides))


class Capture(TrainerCallback):
    """The accumulated gradients at every optimizer step (all-reduced over processes)."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def train(checkpoint, output_dir, groups=GROUPS, levers=None, dtype=torch.float64, optimizer_lr=None, callbacks=(),
          freeze_lm_head=False, **overrides):
    """Train on the scripted rollouts; returns (trainer, rollout batches as scored, gradients per optimizer step,
    rows of each micro-batch forwarded). `optimizer_lr`: plain SGD with that learning rate instead of AdamW.
    `freeze_lm_head`: train all but the (untied) LM head, whose weight gradient TRL's fused LM head accumulates in
    float32 whatever the model's dtype."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    script = scripted_groups(tokenizer, groups)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype)
    model.lm_head.weight.requires_grad_(not freeze_lm_head)
    optimizers = (None, None)
    if optimizer_lr is not None:
        optimizers = (torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=optimizer_lr), None)
    capture = Capture()
    trainer = MathGRPOTrainer(model=model, reward_funcs=[scripted_reward], args=config(output_dir, **overrides),
                              train_dataset=Dataset.from_dict({"prompt": list(script)}), processing_class=tokenizer,
                              rollout_func=ScriptedRollouts(script), levers=levers, optimizers=optimizers,
                              callbacks=[capture, *callbacks])
    rollouts, rows = [], []
    score, loss = trainer._generate_and_score_completions, trainer._compute_loss

    def recorded_score(inputs):
        output = score(inputs)
        rollouts.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in output.items()})
        return output

    def recorded_loss(model, inputs):
        rows.append(inputs["completion_ids"].size(0))
        return loss(model, inputs)

    trainer._generate_and_score_completions, trainer._compute_loss = recorded_score, recorded_loss
    trainer.train()
    return trainer, rollouts, capture.grads, rows


def main(checkpoint: str, prefix: str, overrides: str = "{}") -> None:
    trainer, _, grads, rows = train(checkpoint, Path(prefix).parent / "run", TWO_GROUPS, **json.loads(overrides))
    torch.save({"grads": grads, "rows": rows}, f"{prefix}.rank{trainer.accelerator.process_index}.pt")
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])

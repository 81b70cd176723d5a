"""The assignment's supplement, *Instruction Tuning and RLHF*: zero-shot benchmark evaluations, instruction
tuning of a base model on packed Alpaca-formatted documents, and DPO on Anthropic HH preference pairs.

- `alpaca`: the Alpaca template and how a {prompt, response} pair becomes a token document;
- `parsers`: `parse_mmlu_response`, `parse_gsm8k_response` (the zero-shot benchmarks' answer parsers);
- `benchmarks`: `load_benchmark`, MMLU, GSM8K, AlpacaEval and SimpleSafetyTests read into examples;
- `zero_shot`: `evaluate_zero_shot` / `run_zero_shot` (the *_baseline and *_sft evaluations, recipes/zero_shot.py);
- `instruction_data`: `PackedSFTDataset` / `get_packed_sft_dataset` and `iterate_batches`;
- `instruction_tuning`: `InstructionTuningConfig` and `InstructionTuningTrainer` (TRL's SFTTrainer on packed chunks);
- `hh`: `load_hh`, the single-turn Anthropic HH pairs;
- `dpo_loss`: `compute_per_instance_dpo_loss`;
- `dpo_trainer`: `AlpacaDPOConfig` and `AlpacaDPOTrainer` (TRL's DPOTrainer with the course's formatting).

Modules are imported on use (see `trl_math.__init__`): importing this package loads nothing heavy.
"""

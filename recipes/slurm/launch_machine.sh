#!/usr/bin/env bash
# One machine's share of a multi-machine run. srun starts it once on each machine of the job
# (recipes/slurm/multinode.sbatch); it launches that machine's training processes, which meet the others' at
# MAIN_PROCESS_IP. The arguments are the script and its own, e.g.
#     launch_machine.sh recipes/grpo.py --config recipes/configs/grpo/baseline.yaml --output_dir runs/x
# Environment: SLURM_NNODES and SLURM_NODEID (set by SLURM for each task), MAIN_PROCESS_IP (the first machine),
# GPUS_PER_MACHINE, and optionally ACCELERATE_CONFIG (default accelerate_configs/ddp.yaml) and MAIN_PROCESS_PORT
# (default 29500). output_dir must be on a file system every machine sees: process 0 writes the checkpoints and
# the model, and a relaunch resumes from them.
set -euo pipefail
exec accelerate launch --config_file "${ACCELERATE_CONFIG:-accelerate_configs/ddp.yaml}" \
    --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" \
    --num_processes $((SLURM_NNODES * GPUS_PER_MACHINE)) \
    --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "${MAIN_PROCESS_PORT:-29500}" \
    "$@"

#!/usr/bin/env bash
# Run on a multi-GPU host (all local GPUs in one process, the jax way), or on several hosts under SLURM.
#
#   launch/gpu_run.sh CONFIG WORKDIR [--config.a.b=value ...]
#   e.g. launch/gpu_run.sh configs/default.py workdirs/r1 --config.mesh.fsdp=8 --config.model.dtype=bfloat16
#
# Single host: one process sees every GPU; the mesh spans them. Several hosts: submit with
#   srun --nodes=N --ntasks-per-node=1 --gpus-per-node=8 launch/gpu_run.sh ...
# (SLURM_NTASKS > 1 makes config.mesh.distributed=auto call jax.distributed.initialize(), which reads SLURM's env).
# Env: INSTALL=1 installs the package with jax[cuda12] first; DRY_RUN=1 prints the command only.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,10p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "$(dirname "$0")/.."
if [[ "${INSTALL:-0}" == 1 ]]; then
  bash launch/setup.sh --cuda  # the package with jax[cuda12] and the offline assets, no PyTorch
fi
# Overlap collectives with compute (FSDP all-gathers) and let XLA use most of the memory.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
CMD=(python -m toolgen_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
exec "${CMD[@]}"

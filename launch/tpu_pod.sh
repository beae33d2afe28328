#!/usr/bin/env bash
# Create a Cloud TPU VM slice, install sre2l_jax on every worker and run one stage on all of them.
# JAX finds the other workers itself on TPU pods (SRE2L_AUTO_DISTRIBUTED=1 → jax.distributed.initialize()).
# Data: TFDS on GCS (data.source=tfds, data.dir=gs://...). Workdir: every worker must see the same
# files (images, manifests, Orbax checkpoints), so GCS_BUCKET is mounted with gcsfuse at /gcs/<bucket>
# on every worker and the workdir is a path under it.
#
#   GCS_BUCKET=my-bucket bash launch/tpu_pod.sh [--dry-run] --config=configs/imagenet.py:recover,ipc=50,tfds=1 --workdir=/gcs/my-bucket/sre2l
#
# Variables:
#   TPU_NAME          slice name (default sre2l)
#   ZONE              GCP zone (default us-central2-b)
#   ACCELERATOR_TYPE  e.g. v4-32, v5litepod-64 (default v4-32)
#   RUNTIME_VERSION   TPU VM image (default tpu-ubuntu2204-base)
#   REPO_URL          git URL of this project to clone on the workers (default: copy this checkout with scp)
#   CREATE            1 to create the slice first (default 1)
#   GCS_BUCKET        bucket to mount at /gcs/<bucket> on every worker (default: none; then the
#                     workdir must be another file system all workers share)
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
[[ $# -ge 1 ]] || { echo "usage: $0 [--dry-run] <sre2l_jax.main arguments...>" >&2; exit 2; }
tpu="${TPU_NAME:-sre2l}"
zone="${ZONE:-us-central2-b}"
accel="${ACCELERATOR_TYPE:-v4-32}"
runtime="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
create="${CREATE:-1}"
args=$(printf '%q ' "$@")
for arg in "$@"; do
  if [[ "$arg" == --workdir=*://* ]]; then
    echo "$arg: the workdir must be a mounted path; set GCS_BUCKET and use --workdir=/gcs/<bucket>/..." >&2
    exit 2
  fi
done

run() {
  echo "+ $*"
  [[ "$dry_run" == 1 ]] || "$@"
}

if [[ "$create" == 1 ]]; then
  run gcloud compute tpus tpu-vm create "$tpu" --zone="$zone" --accelerator-type="$accel" --version="$runtime"
fi
if [[ -n "${REPO_URL:-}" ]]; then
  run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
    --command="rm -rf sre2l_jax && git clone $REPO_URL sre2l_jax"
else
  run gcloud compute tpus tpu-vm scp --recurse "$(pwd)" "$tpu:sre2l_jax" --zone="$zone" --worker=all
fi
run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="cd sre2l_jax && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'"
if [[ -n "${GCS_BUCKET:-}" ]]; then
  mount_cmd="if ! command -v gcsfuse >/dev/null; then \
echo 'deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main' | sudo tee /etc/apt/sources.list.d/gcsfuse.list \
&& curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc \
&& sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; fi \
&& sudo mkdir -p /gcs/$GCS_BUCKET && sudo chown \$USER /gcs/$GCS_BUCKET \
&& (mountpoint -q /gcs/$GCS_BUCKET || gcsfuse --implicit-dirs $GCS_BUCKET /gcs/$GCS_BUCKET)"
  run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$mount_cmd"
fi
run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="cd sre2l_jax && SRE2L_AUTO_DISTRIBUTED=1 .venv/bin/python -m sre2l_jax.main $args"

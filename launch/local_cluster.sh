#!/usr/bin/env bash
# Run one sre2l_jax command as N processes on this machine, joined by jax.distributed on 127.0.0.1:
# how to try multi-host behaviour (per-host data shards, per-host image writing, Orbax multi-host
# checkpoints) without a cluster. Every process gets DEVICES_PER_PROCESS simulated CPU devices.
#
#   bash launch/local_cluster.sh [--dry-run] N --config=configs/fashion_mnist.py:recover,runlocal --workdir=W
#
# Variables:
#   DEVICES_PER_PROCESS  simulated CPU devices per process (default 2)
#   PORT                 coordinator port on 127.0.0.1 (default 12355)
#   LOG_DIR              per-process logs (default: <workdir>/logs, else ./logs)
#   PYTHON               interpreter (default .venv/bin/python if present, else python3)
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
if [[ $# -lt 2 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 [--dry-run] N <sre2l_jax.main arguments...>" >&2
  exit 2
fi
n="$1"; shift
devices="${DEVICES_PER_PROCESS:-2}"
port="${PORT:-12355}"
python="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
workdir="."
for arg in "$@"; do
  if [[ "$arg" == --workdir=* ]]; then workdir="${arg#--workdir=}"; fi
done
log_dir="${LOG_DIR:-$workdir/logs}"

echo "plan: $n processes x $devices CPU devices, coordinator 127.0.0.1:$port, logs in $log_dir"
for ((i = 0; i < n; i++)); do
  echo "  process $i: SRE2L_PROCESS_ID=$i $python -m sre2l_jax.main $*"
done
[[ "$dry_run" == 1 ]] && exit 0

mkdir -p "$log_dir"
pids=()
for ((i = 0; i < n; i++)); do
  SRE2L_COORDINATOR="127.0.0.1:$port" SRE2L_NUM_PROCESSES="$n" SRE2L_PROCESS_ID="$i" \
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu \
    "$python" -m sre2l_jax.main "$@" >"$log_dir/process_$i.log" 2>&1 &
  pids+=("$!")
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $log_dir/process_$i.log" >&2
    status=1
  fi
done
[[ "$status" == 0 ]] && echo "all $n processes finished"
exit "$status"

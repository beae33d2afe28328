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
#   MAX_RESTARTS         restarts of the whole job after a process dies (default 0); every stage
#                        resumes from its Orbax checkpoints, as a cluster scheduler's requeue would
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
restarts="${MAX_RESTARTS:-0}"
attempt=0
while true; do
  pids=()
  for ((i = 0; i < n; i++)); do
    SRE2L_COORDINATOR="127.0.0.1:$port" SRE2L_NUM_PROCESSES="$n" SRE2L_PROCESS_ID="$i" \
    XLA_FLAGS="--xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu \
      "$python" -m sre2l_jax.main "$@" >>"$log_dir/process_$i.log" 2>&1 &
    pids+=("$!")
  done
  # The first process to fail takes the job down (its peers would block in collectives), like
  # SLURM's --kill-on-bad-exit.
  status=0
  live=("${pids[@]}")
  while ((${#live[@]} > 0)); do
    finished=""
    if ! wait -n -p finished "${live[@]}"; then
      status=1
      echo "process pid $finished failed (attempt $attempt); stopping the others; see $log_dir/process_*.log" >&2
      kill "${live[@]}" 2>/dev/null || true
      wait "${live[@]}" 2>/dev/null || true
      break
    fi
    remaining=()
    for pid in "${live[@]}"; do [[ "$pid" != "$finished" ]] && remaining+=("$pid"); done
    live=("${remaining[@]}")
  done
  if [[ "$status" == 0 ]]; then
    echo "all $n processes finished"
    exit 0
  fi
  if ((attempt >= restarts)); then
    exit 1
  fi
  attempt=$((attempt + 1))
  echo "restarting all $n processes (restart $attempt of $restarts); stages resume from checkpoints" >&2
done

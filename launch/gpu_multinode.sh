#!/usr/bin/env bash
# Trains on several GPU machines: run this once on every node, one process per node driving
# all of that node's GPUs. The processes find each other through the coordinator (rank 0's
# HOST:PORT) and then train as one job with global batch sizes.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [OPTIONS] CONFIG WORKDIR [TRAINER FLAGS...]

Runs on this node: python -m flowpp_jax.main --config=CONFIG --workdir=WORKDIR
  --coordinator_address=HOST:PORT --num_processes=N --process_id=RANK [TRAINER FLAGS...]
with the GPU environment of gpu_local.sh. Start it on every node, with the same CONFIG,
WORKDIR and flags and its own --rank. WORKDIR must be shared by all nodes (gs://BUCKET/...,
or a shared file system): they all write checkpoints there.

Options (a flag wins over its environment variable, which wins over SLURM's):
  --coordinator=HOST:PORT  rank 0's address, reachable from every node
                           (env FLOWPP_COORDINATOR_ADDRESS; SLURM: the first host of
                           SLURM_STEP_NODELIST or SLURM_JOB_NODELIST, and port
                           FLOWPP_COORDINATOR_PORT or 61440 + SLURM_JOB_ID % 4096, as JAX picks)
  --num-nodes=N            the number of nodes (env FLOWPP_NUM_PROCESSES; SLURM_NTASKS)
  --rank=I                 this node, 0 .. N-1 (env FLOWPP_PROCESS_ID; SLURM_PROCID)
EOF
  usage_common
  cat <<EOF

Under SLURM, one task per node:
  srun --nodes=4 --ntasks-per-node=1 $SCRIPT_NAME configs/imagenet32.py /shared/runs/i32
Elsewhere, on node I of 4 (node 0 first or last, it waits for the others):
  $SCRIPT_NAME --coordinator=node0:61440 --num-nodes=4 --rank=I configs/imagenet32.py gs://b/i32
EOF
}

# The first host of a SLURM node list: "gpu[003-006,9],login1" -> "gpu003". Each bracketed
# range in the first entry is replaced by its first member ("r[1-2]-n[07-08]" -> "r1-n07").
first_slurm_host() {
  local list=$1 entry='' depth=0 char i
  # The first entry ends at the first comma outside brackets.
  for ((i = 0; i < ${#list}; i++)); do
    char=${list:i:1}
    case $char in
      '[') depth=$((depth + 1)) ;;
      ']') depth=$((depth - 1)) ;;
      ,) ((depth > 0)) || break ;;
    esac
    entry+=$char
  done
  while [[ $entry =~ ^([^[]*)\[([^],-]*)[^]]*\](.*)$ ]]; do
    entry=${BASH_REMATCH[1]}${BASH_REMATCH[2]}${BASH_REMATCH[3]}
  done
  printf '%s\n' "$entry"
}

# Fills the options that neither a flag nor FLOWPP_* gave from SLURM's environment.
from_slurm() {
  [[ -n ${SLURM_PROCID:-} ]] || return 0
  local nodes=${SLURM_STEP_NUM_NODES:-${SLURM_NNODES:-}}
  if [[ -n ${SLURM_NTASKS:-} && -n $nodes && $SLURM_NTASKS != "$nodes" ]]; then
    die "SLURM started $SLURM_NTASKS tasks on $nodes nodes; this script wants one task per" \
      "node (srun --ntasks-per-node=1): each process drives all of its node's GPUs"
  fi
  [[ -n ${OPT[rank]} ]] || OPT[rank]=$SLURM_PROCID
  [[ -n ${OPT[num-nodes]} ]] || OPT[num-nodes]=${SLURM_NTASKS:-}
  local nodelist=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}
  if [[ -z ${OPT[coordinator]} && -n $nodelist ]]; then
    local port=${FLOWPP_COORDINATOR_PORT:-}
    if [[ -z $port && ${SLURM_JOB_ID:-} =~ ^[0-9]+$ ]]; then
      # JAX's own SLURM detection picks this port: one per job, so jobs sharing a node differ.
      port=$((10#$SLURM_JOB_ID % 4096 + 65536 - 4096))
    fi
    [[ -n $port ]] || die 'no coordinator port: set FLOWPP_COORDINATOR_PORT or --coordinator'
    OPT[coordinator]="$(first_slurm_host "$nodelist"):$port"
  fi
}

main() {
  OPT=([coordinator]="${FLOWPP_COORDINATOR_ADDRESS:-}" [num-nodes]="${FLOWPP_NUM_PROCESSES:-}"
       [rank]="${FLOWPP_PROCESS_ID:-}")
  parse_args "$@"
  from_slurm
  require_option coordinator FLOWPP_COORDINATOR_ADDRESS
  require_option num-nodes FLOWPP_NUM_PROCESSES
  require_option rank FLOWPP_PROCESS_ID
  [[ ${OPT[coordinator]} =~ ^[^:]+:[0-9]+$ ]] ||
    die "--coordinator must be HOST:PORT, got '${OPT[coordinator]}'"
  require_int num-nodes 1
  require_int rank 0
  ((10#${OPT[rank]} < 10#${OPT[num-nodes]})) ||
    die "--rank=${OPT[rank]} must be below --num-nodes=${OPT[num-nodes]}"
  take_run_args
  gpu_environment
  trainer_command "$PYTHON" "--coordinator_address=${OPT[coordinator]}" \
    "--num_processes=$((10#${OPT[num-nodes]}))" "--process_id=$((10#${OPT[rank]}))"
  run_exec env "${GPU_ENV[@]}" "${TRAINER[@]}"
}

main "$@"

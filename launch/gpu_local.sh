#!/usr/bin/env bash
# Trains (or evaluates, samples) on one machine with several GPUs: a single process drives all
# the GPUs it sees (jax.pmap over them), so no multi-process flags are needed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [--dry-run] CONFIG WORKDIR [TRAINER FLAGS...]

Runs python -m flowpp_jax.main --config=CONFIG --workdir=WORKDIR [TRAINER FLAGS...] as one
process on all of this machine's GPUs (CUDA_VISIBLE_DEVICES narrows them), with:
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.9, XLA_FLAGS+=--xla_gpu_enable_latency_hiding_scheduler=true,
  NCCL_DEBUG=WARN (values already in the environment are kept).
TRAINER FLAGS are passed on unchanged, e.g. --config.batch_size=128 --mode=eval.
The config's batch sizes are global: they must divide by the number of GPUs.
PYTHON names the interpreter (default: python).

Options:
EOF
  usage_common
}

main() {
  parse_args "$@"
  take_run_args
  gpu_environment
  trainer_command "$PYTHON"
  run_exec env "${GPU_ENV[@]}" "${TRAINER[@]}"
}

main "$@"

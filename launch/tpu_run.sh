#!/usr/bin/env bash
# Runs the trainer on every worker of a TPU VM made by tpu_create.sh, as one multi-process job
# (--distributed: jax.distributed.initialize() finds the other workers by itself on Cloud TPU).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [OPTIONS] CONFIG WORKDIR [TRAINER FLAGS...]

On every worker at once (gcloud ... ssh --worker=all), in ~/flowpp_jax:
  ~/flowpp_venv/bin/python -m flowpp_jax.main --config=CONFIG --workdir=WORKDIR --distributed
    [TRAINER FLAGS...]
with each worker's output in ~/flowpp_logs/RUN-<worker hostname>.log (and on this terminal,
unless --background).

CONFIG is a path in the checkout, e.g. configs/cifar10.py. On a pod slice WORKDIR must be a
bucket, gs://BUCKET/PATH, that all workers share (each has its own disk); so may the data be:
--config.data_dir=gs://BUCKET/tensorflow_datasets. TRAINER FLAGS pass on unchanged.

EOF
  tpu_usage_common
  cat <<EOF

Options:
  --background  start the runs with nohup and return; each worker's PID is then in
                ~/flowpp_logs/RUN-<hostname>.pid
  --run=RUN     the logs' name (default: WORKDIR's last part)
EOF
  usage_common
  cat <<EOF

Example:
  $SCRIPT_NAME --name=flowpp --zone=us-central2-b --background configs/imagenet32.py \\
    gs://my-bucket/runs/i32 --config.data_dir=gs://my-bucket/tensorflow_datasets
EOF
}

main() {
  OPT=([run]='')
  FLAG=([background]=0)
  tpu_options
  parse_args "$@"
  tpu_scope
  take_run_args
  if [[ $WORKDIR != gs://* ]]; then
    note "WORKDIR $WORKDIR is not in a bucket: on a pod slice each worker writes its own" \
      "disk, and checkpoints need one shared WORKDIR (gs://BUCKET/PATH)"
  fi
  local run_name=${OPT[run]}
  if [[ -z $run_name ]]; then
    run_name=${WORKDIR%/}
    run_name=${run_name##*/}
  fi
  # The name becomes part of a remote file name: keep it to characters that need no quoting.
  run_name=${run_name//[^A-Za-z0-9._-]/_}

  trainer_command "$TPU_VENV/bin/python" --distributed
  # TRAINER[0] is a remote expression ("$HOME/..."): it stays unquoted for the remote shell.
  local trainer
  trainer="${TRAINER[0]} $(shell_quote "${TRAINER[@]:1}")"
  local log="$TPU_LOGS/$run_name-\$(hostname)"
  local command="mkdir -p $TPU_LOGS && cd $TPU_CHECKOUT && "
  if [[ ${FLAG[background]} == 1 ]]; then
    # All three standard streams redirected: ssh returns at once instead of waiting for them.
    command+="{ nohup $trainer > $log.log 2>&1 < /dev/null & echo \$! > $log.pid; }"
    command+=" && echo started: $log.log"
  else
    command+="set -o pipefail && $trainer 2>&1 | tee $log.log"
  fi
  tpu_ssh_all "$command"
}

main "$@"

#!/usr/bin/env bash
# Deletes a TPU VM made by tpu_create.sh (all of its workers and their disks). What a run wrote
# to a bucket stays there.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF_USAGE
Usage: $SCRIPT_NAME [OPTIONS]

Deletes the TPU VM NAME: gcloud compute tpus tpu-vm delete NAME (gcloud asks to confirm,
unless --yes). Logs in ~/flowpp_logs and any local WORKDIR on the workers go with it.

EOF_USAGE
  tpu_usage_common
  cat <<EOF_USAGE

Options:
  --yes              do not ask (gcloud --quiet)
EOF_USAGE
  usage_common
}

main() {
  FLAG=([yes]=0)
  tpu_options
  parse_args "$@"
  ((${#ARGS[@]} == 0)) || die "unexpected argument '${ARGS[0]}' (the options are --NAME=VALUE)"
  tpu_scope
  local quiet=()
  [[ ${FLAG[yes]} == 0 ]] || quiet=(--quiet)
  run gcloud compute tpus tpu-vm delete "${OPT[name]}" "${TPU_SCOPE[@]}" "${quiet[@]}"
}

main "$@"

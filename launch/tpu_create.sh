#!/usr/bin/env bash
# Creates a Cloud TPU VM (one host) or pod slice (several hosts, "workers") and installs the
# project on every worker: the source, a Python 3.11 environment with jax[tpu], the pinned
# requirements and the GCS clients.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [OPTIONS]

Creates the TPU VM NAME, then on all of its workers (gcloud ... --worker=all):
  ~/flowpp_jax   this checkout's commit REF (git archive, copied with gcloud scp), or a clone
  ~/flowpp_venv  Python $DEFAULT_PYTHON (made by uv, which fetches it where the image has none),
                 with requirements.txt, jax[tpu], gcsfs and google-cloud-storage, and the
                 project (pip install -e)
Then: launch/tpu_run.sh, and launch/tpu_delete.sh when done.

EOF
  tpu_usage_common
  cat <<EOF

Options:
  --accelerator=TYPE  e.g. v4-8 (one host), v4-32 (4 hosts), v5litepod-16, v6e-8
                      (env TPU_ACCELERATOR; default $DEFAULT_ACCELERATOR, where every official
                      config compiles and fits at its batch: docs/tpu.md; check another
                      type first with python -m flowpp_jax.bench --target=TYPE --compile_only)
  --version=VERSION   TPU software version (env TPU_VERSION; default by TYPE: v2-v4
                      tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
                      v6e v2-alpha-tpuv6e; list: gcloud compute tpus tpu-vm versions list)
  --spot              a Spot VM (cheaper; can be preempted: resume with the same WORKDIR)
  --ref=REF           the commit to ship (default HEAD; uncommitted changes are not shipped:
                      commit them, or pass --ref=\$(git stash create))
  --git-url=URL       workers clone URL instead (at --ref, else its default branch)
  --python=VERSION    Python on the workers (default $DEFAULT_PYTHON)
  --install-only      the VM exists: only (re)install, e.g. to ship new code
EOF
  usage_common
  cat <<EOF

Example:
  $SCRIPT_NAME --name=flowpp --zone=us-central2-b    # a v4-8
EOF
}

readonly DEFAULT_PYTHON=3.11  # what CI tests with
# The slice every official config was compiled for and fits on at its batch (docs/tpu.md).
readonly DEFAULT_ACCELERATOR=v4-8
# Packages beside the requirements: the TPU runtime, and the gs:// clients of etils.epath
# (workdir files, tfds metadata) and of tensorboardX (event files).
readonly TPU_PACKAGES=('jax[tpu]' gcsfs google-cloud-storage)

# The software version that goes with an accelerator type (Cloud TPU's documented defaults).
default_version() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

create_vm() {
  local version=${OPT[version]}
  if [[ -z $version ]]; then
    version=$(default_version "${OPT[accelerator]}") ||
      die "no default --version for --accelerator=${OPT[accelerator]}: pass one" \
        "(gcloud compute tpus tpu-vm versions list)"
  fi
  local spot=()
  [[ ${FLAG[spot]} == 0 ]] || spot=(--spot)
  run gcloud compute tpus tpu-vm create "${OPT[name]}" "${TPU_SCOPE[@]}" \
    "--accelerator-type=${OPT[accelerator]}" "--version=$version" "${spot[@]}"
}

# Puts the source in ~/flowpp_jax on every worker: prints the remote commands still to run
# there (after a copied archive) or runs the copy itself.
ship_source() {
  if [[ -n ${OPT[git-url]} ]]; then
    local fetch url
    url=$(shell_quote "${OPT[git-url]}")
    fetch="rm -rf $TPU_CHECKOUT && git clone --quiet $url $TPU_CHECKOUT"
    [[ -z ${OPT[ref]} ]] ||
      fetch+=" && git -C $TPU_CHECKOUT checkout --quiet $(shell_quote "${OPT[ref]}")"
    REMOTE_FETCH=$fetch
    return 0
  fi
  # A fixed local name (not mktemp): --dry-run must print the very commands a run executes.
  local archive="${TMPDIR:-/tmp}/flowpp_jax-${OPT[name]}.tar.gz"
  run git -C "$REPO_ROOT" archive --format=tar.gz "--output=$archive" "${OPT[ref]:-HEAD}"
  run gcloud compute tpus tpu-vm scp "$archive" "${OPT[name]}:flowpp_jax.tar.gz" --worker=all \
    "${TPU_SCOPE[@]}"
  run rm -f "$archive"
  REMOTE_FETCH="rm -rf $TPU_CHECKOUT && mkdir -p $TPU_CHECKOUT"
  REMOTE_FETCH+=" && tar -xzf flowpp_jax.tar.gz -C $TPU_CHECKOUT && rm flowpp_jax.tar.gz"
}

install_everywhere() {
  local python=$TPU_VENV/bin/python packages steps
  packages=$(shell_quote "${TPU_PACKAGES[@]}")
  steps=(
    "$REMOTE_FETCH"
    # uv makes the environment: it brings its own Python where the image's is older (Ubuntu
    # 22.04 has 3.10). Pip may refuse --user on newer images (PEP 668) without this variable.
    'PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --user --upgrade uv'
    "rm -rf $TPU_VENV"
    "python3 -m uv venv --quiet --python $(shell_quote "${OPT[python]}") $TPU_VENV"
    "python3 -m uv pip install --python $python -r $TPU_CHECKOUT/requirements.txt $packages \
-e $TPU_CHECKOUT"
    "$python -c 'import flowpp_jax, jax; print(\"installed: jax\", jax.__version__)'"
  )
  # Joined with && (not set -e, which ignores failures inside a && list): a step that fails
  # stops its worker's install, and gcloud reports the failure.
  local command
  command=$(printf '%s && ' "${steps[@]}")
  tpu_ssh_all "${command% && }"
}

main() {
  OPT=([accelerator]="${TPU_ACCELERATOR:-$DEFAULT_ACCELERATOR}" [version]="${TPU_VERSION:-}" [ref]='' [git-url]=''
       [python]="$DEFAULT_PYTHON")
  FLAG=([spot]=0 [install-only]=0)
  tpu_options
  parse_args "$@"
  ((${#ARGS[@]} == 0)) || die "unexpected argument '${ARGS[0]}' (the options are --NAME=VALUE)"
  tpu_scope
  [[ ${FLAG[install-only]} == 1 ]] || create_vm
  ship_source
  install_everywhere
  is_dry_run || note "installed on every worker of ${OPT[name]}; next: launch/tpu_run.sh"
}

main "$@"

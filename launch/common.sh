# shellcheck shell=bash disable=SC2016
# What the launch/*.sh scripts share: option parsing, errors, --dry-run, the trainer's command
# line, the GPU environment and the TPU VM's gcloud flags and paths. Sourced, never run.
#
# A script declares its options before calling parse_args:
#   OPT=([zone]="${TPU_ZONE:-}")   # --zone=VALUE, the default from the environment
#   FLAG=([background]=0)          # --background (no value)
# --dry-run and --help are every script's. Options come before the positional arguments;
# parse_args leaves those in ARGS.
#
# The remote commands are single-quoted on purpose (SC2016 off): $HOME and $(hostname) must
# expand on the TPU worker, not here.

readonly SCRIPT_NAME=${0##*/}
REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034  # for the scripts that source this file
readonly REPO_ROOT
# The interpreter of the GPU scripts: the python of the active environment unless PYTHON says.
readonly PYTHON=${PYTHON:-python}

declare -A OPT=() FLAG=()
declare -a ARGS=() OVERRIDES=() TRAINER=() GPU_ENV=() TPU_SCOPE=()
CONFIG=''
WORKDIR=''

# Prints "error: ..." and exits with 2, the status of bad input (nothing was run).
die() {
  printf 'error: %s\n' "$*" >&2
  printf "run '%s --help' for the usage\n" "$SCRIPT_NAME" >&2
  exit 2
}

# Messages that are not commands go to stderr, so that --dry-run's stdout is only commands.
note() {
  printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2
}

# Prints its arguments as one shell-quoted command line that a shell reads back into the same
# words (like Python's shlex.quote): safe words bare, others in single quotes.
shell_quote() {
  local word escaped q="'\\''" words=()
  for word in "$@"; do
    if [[ -n $word && $word != *[!A-Za-z0-9_@%+=:,./-]* ]]; then
      words+=("$word")
    else
      escaped=${word//\'/$q}
      words+=("'$escaped'")
    fi
  done
  printf '%s\n' "${words[*]}"
}

is_dry_run() {
  [[ ${FLAG[dry-run]} == 1 ]]
}

# Runs a command, or with --dry-run only prints it. Each command is echoed to stderr first so
# that a log shows exactly what ran.
run() {
  if is_dry_run; then
    shell_quote "$@"
    return 0
  fi
  printf '+ %s\n' "$(shell_quote "$@")" >&2
  "$@"
}

# Like run, but the command replaces this shell: signals (Ctrl-C, SLURM's SIGTERM before a
# job's time limit) then reach the trainer directly.
run_exec() {
  if is_dry_run; then
    shell_quote "$@"
    exit 0
  fi
  printf '+ %s\n' "$(shell_quote "$@")" >&2
  exec "$@"
}

# Parses "$@" into OPT, FLAG and ARGS (see the top of this file); --help prints usage (each
# script's own function) and exits.
parse_args() {
  local arg key options_done=0
  FLAG[dry-run]=0
  ARGS=()
  # --help and --dry-run are recognised anywhere: the trainer has neither, and a --dry-run
  # passed through to it by mistake would start a real run.
  for arg in "$@"; do
    case $arg in
      --help | -h)
        usage
        exit 0
        ;;
    esac
  done
  for arg in "$@"; do
    if [[ $arg == --dry-run ]]; then
      FLAG[dry-run]=1
    elif ((options_done)); then
      ARGS+=("$arg")
    else
      case $arg in
        --) options_done=1 ;;
        --*=*)
          key=${arg%%=*}
          key=${key#--}
          if [[ -v OPT[$key] ]]; then
            OPT[$key]=${arg#*=}
          elif [[ -v FLAG[$key] ]]; then
            die "--$key takes no value (got $arg)"
          else
            die "unknown option ${arg%%=*}"
          fi
          ;;
        -*)
          key=${arg#--}
          if [[ -v FLAG[$key] && $arg == --* ]]; then
            FLAG[$key]=1
          elif [[ -v OPT[$key] && $arg == --* ]]; then
            die "$arg needs a value: $arg=VALUE"
          else
            die "unknown option $arg"
          fi
          ;;
        *)
          options_done=1
          ARGS+=("$arg")
          ;;
      esac
    fi
  done
}

# Dies unless option KEY (OPT[KEY]) is set; HINT names its environment variable.
require_option() {
  local key=$1 hint=${2:-}
  [[ -n ${OPT[$key]} ]] || die "missing --$key=...${hint:+ (or $hint)}"
}

# Dies unless the value of --KEY is a whole number >= MIN.
require_int() {
  local key=$1 min=$2 value=${OPT[$1]}
  if ! [[ $value =~ ^[0-9]+$ ]] || ((10#$value < min)); then
    die "--$key must be a whole number >= $min, got '$value'"
  fi
}

# ARGS -> CONFIG, WORKDIR and OVERRIDES (the trainer's other flags, passed on unchanged).
take_run_args() {
  ((${#ARGS[@]} >= 2)) || die "missing CONFIG and WORKDIR arguments (got ${#ARGS[@]} of 2)"
  CONFIG=${ARGS[0]}
  WORKDIR=${ARGS[1]}
  OVERRIDES=("${ARGS[@]:2}")
  [[ -n $CONFIG && -n $WORKDIR ]] || die 'CONFIG and WORKDIR must not be empty'
  local arg
  for arg in "${OVERRIDES[@]}"; do
    case $arg in
      --config | --config=* | --workdir | --workdir=*)
        die "${arg%%=*} is given by the CONFIG and WORKDIR arguments, not as an override"
        ;;
    esac
  done
}

# TRAINER=(python -m flowpp_jax.main --config --workdir EXTRA... OVERRIDES...): the overrides go
# last so that they win over anything the script adds (absl keeps a flag's last value).
trainer_command() {
  local python=$1
  shift
  # shellcheck disable=SC2034  # used by the scripts
  TRAINER=("$python" -m flowpp_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" "$@"
           "${OVERRIDES[@]}")
}

# --- GPUs -------------------------------------------------------------------------------------

# GPU_ENV=(NAME=VALUE ...) for `env`: one process per machine, driving all of its GPUs. Values
# already in the environment win.
gpu_environment() {
  # JAX preallocates 75% of each GPU by default. The one process owns the GPUs here, so give
  # XLA 90%; the rest stays for cuDNN/cuBLAS workspaces and NCCL's buffers, outside XLA's pool.
  GPU_ENV=("XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}")
  # Lets XLA's scheduler overlap the gradient all-reduce (NCCL) with the backward pass; the
  # flag NVIDIA's JAX containers set. Kept out if the caller's XLA_FLAGS already decide it.
  local xla_flags=${XLA_FLAGS:-}
  if [[ $xla_flags != *xla_gpu_enable_latency_hiding_scheduler* ]]; then
    xla_flags="${xla_flags:+$xla_flags }--xla_gpu_enable_latency_hiding_scheduler=true"
  fi
  GPU_ENV+=("XLA_FLAGS=$xla_flags")
  # NCCL is silent by default, even when it fails to find a network or a GPU peer; WARN makes
  # it say why. (Interface choice, NCCL_SOCKET_IFNAME, is site-specific: set it yourself.)
  GPU_ENV+=("NCCL_DEBUG=${NCCL_DEBUG:-WARN}")
}

# --- TPU VMs ----------------------------------------------------------------------------------

# Where tpu_create.sh installs on each worker, as words of a remote command line (quoted there,
# expanded there): the project's source (configs/ included), its Python environment, and
# tpu_run.sh's logs (one per worker and run).
# shellcheck disable=SC2034  # for the scripts that source this file
readonly TPU_CHECKOUT='"$HOME/flowpp_jax"' TPU_VENV='"$HOME/flowpp_venv"' \
  TPU_LOGS='"$HOME/flowpp_logs"'

# Declares the options that name a TPU VM (NAME, ZONE, PROJECT) with their environment defaults.
tpu_options() {
  OPT[name]=${TPU_NAME:-}
  OPT[zone]=${TPU_ZONE:-}
  OPT[project]=${TPU_PROJECT:-}
}

# Checks them and sets TPU_SCOPE=(--zone=... [--project=...]), the flags of every gcloud call.
tpu_scope() {
  require_option name TPU_NAME
  require_option zone TPU_ZONE
  [[ ${OPT[name]} =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name must be lower-case letters, digits and dashes, got '${OPT[name]}'"
  TPU_SCOPE=("--zone=${OPT[zone]}")
  [[ -z ${OPT[project]} ]] || TPU_SCOPE+=("--project=${OPT[project]}")
}

# Runs a shell command line on every worker of the TPU VM at once.
tpu_ssh_all() {
  run gcloud compute tpus tpu-vm ssh "${OPT[name]}" --worker=all "${TPU_SCOPE[@]}" \
    "--command=$1"
}

tpu_usage_common() {
  cat <<'EOF'
The TPU VM (all three scripts; flags win over the environment):
  --name=NAME        TPU VM name (env TPU_NAME)
  --zone=ZONE        e.g. us-central2-b (env TPU_ZONE)
  --project=PROJECT  Google Cloud project (env TPU_PROJECT; default: gcloud's core/project)
EOF
}

usage_common() {
  cat <<'EOF'
  --dry-run          print the commands, one per line, shell-quoted, and run none
  -h, --help         this help
Bad or missing arguments: an "error: ..." line and exit status 2.
EOF
}

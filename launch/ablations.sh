#!/usr/bin/env bash
# The paper's ablation table (Table 2) in miniature, on one machine: Flow++ and its three
# ablations on the digits, at 17 levels (configs/digits*.py) and as 8-bit PNGs at 256 levels,
# several seeds each; then one learning-curve PNG and one results table per data set
# (docs/ablations.md shows what it gave).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

OPT=([seeds]=3 [steps]=800 [iw-samples]=64 [data]='digits,png256')

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [OPTIONS] OUT [TRAINER FLAGS...]

Trains configs/digits.py (Flow++) and its ablations digits_no_attention, digits_affine and
digits_uniform_dequant, each with seeds 0..SEEDS-1, in OUT/DATA/VARIANT_sSEED, on:
  digits  scikit-learn's digits, 17 levels (the configs as they are);
  png256  the same 1,797 images as 8-bit PNGs (OUT/digits_png, written once) read through
          folder: at 256 levels, 20% held out for the test split (360 images, as digits).
Each run evaluates the test ELBO every 100 steps, and at the end the importance-weighted bound
with K = IW-SAMPLES (WORKDIR/eval.json); its wall time goes to WORKDIR/wall_s. A run whose
eval.json already holds the last step is skipped, so running the script again resumes.
Runs reuse the programs that earlier runs compiled, from the commands' compilation cache
(docs/performance.md, "Start-up"). Then, per data set,
python -m flowpp_jax.plot_runs draws OUT/DATA/curves.png and prints the table
(OUT/DATA/table.md). TRAINER FLAGS go to every run, e.g. --config.eval.batch_size=60.
PYTHON names the interpreter (default: python).

Options:
  --seeds=N          seeds per variant (default 3)
  --steps=N          training steps per run (default 800)
  --iw-samples=K     K of the final importance-weighted bound (default 64)
  --data=LIST        comma-separated data sets, of digits and png256 (default: both)
EOF
  usage_common
}

readonly VARIANTS=(flowpp:digits no_attention:digits_no_attention affine:digits_affine
                   uniform_dequant:digits_uniform_dequant)

# Writes the digits as 8-bit PNGs into folder $1, as the README's own-images example does.
write_pngs() {
  # One line, so that --dry-run prints one command per line.
  run "$PYTHON" -c "import sys, pathlib, PIL.Image, sklearn.datasets; \
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True); \
[PIL.Image.fromarray((x * 255 / 16).round().astype('uint8')).save(out / f'{i:04d}.png') \
 for i, x in enumerate(sklearn.datasets.load_digits().images)]" "$1"
}

# True where workdir $1 holds the final evaluation of a run of ${OPT[steps]} steps.
finished() {
  [[ -f $1/eval.json ]] && grep -Eq "\"step\": ${OPT[steps]}[,}]" "$1/eval.json"
}

main() {
  parse_args "$@"
  local key
  for key in seeds steps iw-samples; do require_int "$key" 1; done
  ((${#ARGS[@]} >= 1)) || die 'missing the OUT argument (the folder of all runs)'
  local out=${ARGS[0]} seeds=$((10#${OPT[seeds]})) data_sets=() data name config seed workdir start
  OVERRIDES=("${ARGS[@]:1}")
  IFS=, read -ra data_sets <<<"${OPT[data]}"
  for data in "${data_sets[@]}"; do
    [[ $data == digits || $data == png256 ]] || die "--data holds digits and png256, got '$data'"
  done
  local -A data_flags=([digits]='' [png256]="--config.dataset=folder:$out/digits_png
    --config.model.num_levels=256 --config.data.test_fraction=0.2")
  if [[ ${OPT[data]} == *png256* && ! -f $out/digits_png/1796.png ]]; then
    write_pngs "$out/digits_png"
  fi
  # Seeds outermost: an interrupted sweep leaves whole seeds of every variant.
  for ((seed = 0; seed < seeds; seed++)); do
    for data in "${data_sets[@]}"; do
      for name in "${VARIANTS[@]}"; do
        config=${name#*:}
        workdir=$out/$data/${name%%:*}_s$seed
        if finished "$workdir"; then
          note "$workdir is done"
          continue
        fi
        start=$SECONDS
        # shellcheck disable=SC2086  # data_flags holds whole words
        run "$PYTHON" -m flowpp_jax.main "--config=$REPO_ROOT/configs/$config.py" \
          "--workdir=$workdir" ${data_flags[$data]} "--config.seed=$seed" \
          "--config.num_train_steps=${OPT[steps]}" \
          --config.eval_every_steps=100 --config.sample_every_steps="${OPT[steps]}" \
          --config.eval.num_iw_samples="${OPT[iw-samples]}" "${OVERRIDES[@]}"
        is_dry_run || printf '%s\n' "$((SECONDS - start))" >"$workdir/wall_s"
      done
    done
  done
  for data in "${data_sets[@]}"; do
    local workdirs=()
    for name in "${VARIANTS[@]}"; do
      for ((seed = 0; seed < seeds; seed++)); do
        workdirs+=("$out/$data/${name%%:*}_s$seed")
      done
    done
    run "$PYTHON" -m flowpp_jax.plot_runs "${workdirs[@]}" "--out=$out/$data/curves.png" \
      "--table=$out/$data/table.md" "--title=Flow++ ablations on the digits ($data)"
  done
}

main "$@"

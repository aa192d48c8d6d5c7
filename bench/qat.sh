#!/usr/bin/env bash
# QAT benchmark (issue 18): RTN, GPTQ and QAT-from-GPTQ with the ce and the kd loss, per scheme,
# scored on the evaluation split of the text (QAT and GPTQ see only the calibration split).
# One `lowbit qat` process per (scheme, loss), so peak RSS is that run's own; prints a Markdown
# table (KLD, ΔPPL, top-1, time, peak RSS) and keeps each run's JSON in $OUT.
#
#   bench/qat.sh MODEL TOKENIZER TEXT STEPS BATCH CTX LR EVAL_WINDOWS [SCHEMES...]
#   bench/qat.sh ../shared/models/stories260K.bin ../shared/models/tok512.bin ../shared/data/tinystories_val.txt 100 8 128 1e-3 100
#
# Environment: LOWBIT (default build/release/lowbit), OUT (default /tmp/lowbit-qat-bench),
# OMP_NUM_THREADS (default 1; OMP_WAIT_POLICY=passive is set).
set -euo pipefail
if [ $# -lt 8 ]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
MODEL=$1 TOK=$2 TEXT=$3 STEPS=$4 BATCH=$5 CTX=$6 LR=$7 EVW=$8
shift 8
SCHEMES=("$@")
[ ${#SCHEMES[@]} -gt 0 ] || SCHEMES=(w4a16-g32 w4a16-g128 w3a16-g64 w4a8-g128)
LOWBIT=${LOWBIT:-build/release/lowbit}
OUT=${OUT:-/tmp/lowbit-qat-bench}
mkdir -p "$OUT"
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
TOKARG=()
[ "$TOK" = "-" ] || TOKARG=(--tokenizer "$TOK")
for s in "${SCHEMES[@]}"; do
  for loss in ce kd; do
    j="$OUT/$(basename "$MODEL")-$s-$loss.json"
    "$LOWBIT" qat --model "$MODEL" "${TOKARG[@]}" --scheme "$s" --data "$TEXT" --steps "$STEPS" --batch "$BATCH" --ctx "$CTX" \
      --lr "$LR" --init gptq --loss "$loss" --eval "$TEXT" --eval-windows "$EVW" --eval-ctx 128 --json "$j" > "$OUT/last.log"
  done
done
python3 - "$OUT" "$(basename "$MODEL")" "${SCHEMES[@]}" <<'EOF'
import json, sys
out, model, schemes = sys.argv[1], sys.argv[2], sys.argv[3:]
print("| scheme | method | KLD mean | ΔPPL ± SE | top-1 | time (s) | peak RSS (MiB) | KLD removed vs GPTQ |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for s in schemes:
    runs = {l: json.load(open(f"{out}/{model}-{s}-{l}.json")) for l in ("ce", "kd")}
    r = runs["kd"]
    e = r["eval"]
    g = e["init"]["kld_mean"]
    def row(name, m, t, rss, removed=""):
        print(f"| {s} | {name} | {m['kld_mean']:.5f} | {m['delta_ppl']:+.4f} ± {m['delta_ppl_se']:.4f} | {100*m['top1']:.2f}% | {t:.1f} | {rss} | {removed} |")
    row("RTN", e["rtn"], r["rtn_seconds"], "")
    row("GPTQ", e["init"], r["init_seconds"], "")
    for l in ("ce", "kd"):
        q = runs[l]["eval"]["qat"]
        row(f"QAT-from-GPTQ {l}", q, runs[l]["qat_seconds"], f"{runs[l]['peak_rss_mib']:.0f}", f"{100*(g-q['kld_mean'])/g:.1f}%")
EOF

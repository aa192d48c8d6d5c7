#!/usr/bin/env bash
# llama-quantize vs lowbit on llama.cpp's own harness (issue 20): for each GGUF type, file size,
# mean KLD and top-1 agreement (llama-perplexity --kl-divergence, -c 128 --chunks 64) of
#   llama-quantize TYPE (no imatrix), llama-quantize --imatrix TYPE, lowbit quantize --scheme gguf-TYPE
# against an F32 GGUF of SmolLM2-135M's dequantized Q4_1 weights (written by `lowbit convert`).
# Text: ../shared/data/tinystories_val.txt split as lowbit splits it (first 10% of the stories =
# calibration for llama-imatrix and lowbit's statistics, the rest = evaluation).
#
#   bench/gguf_vs_llama_quantize.sh [WORKDIR] [TYPES...]     # default TYPES: Q4_0 IQ4_NL IQ4_XS Q4_K_S Q4_K_M Q3_K_M Q2_K
# Env: LLAMA_BIN (default /work/llamacpp/src/build/bin), PPL_BIN (llama-perplexity to score with; default
#      LLAMA_BIN's), LOWBIT (default build/release/lowbit), MODEL (the source model; default SmolLM2-135M Q4_1:
#      its F32 reference is written by `lowbit convert`; any GGUF works: a k-quant source such as Qwen2.5-Coder-1.5B
#      Q4_K_M gets its F32 reference from `llama-quantize --allow-requantize MODEL ref-f32.gguf F32`), CHUNKS
#      (default 64 evaluation chunks of 128 tokens),
#      LOWBIT_MODEL (what lowbit quantizes; default MODEL, e.g. ref-f32.gguf to start from the same F32 file),
#      THREADS (default 2), CALIB_CHUNKS (default 40: imatrix and lowbit both see 40 x 128 tokens),
#      SKIP_LLAMA=1 / SKIP_LOWBIT=1 to run one side only. Prints a Markdown table; logs in WORKDIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/gguf_vs_llama_quantize}; shift || true
TYPES=${*:-Q4_0 IQ4_NL IQ4_XS Q4_K_S Q4_K_M Q3_K_M Q2_K}
LLAMA_BIN=${LLAMA_BIN:-/work/llamacpp/src/build/bin}
LOWBIT=${LOWBIT:-$ROOT/build/release/lowbit}
THREADS=${THREADS:-2}
CALIB_CHUNKS=${CALIB_CHUNKS:-40}
MODEL=${MODEL:-$ROOT/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
CHUNKS=${CHUNKS:-64}
PPL_BIN=${PPL_BIN:-$LLAMA_BIN/llama-perplexity}
TEXT=$ROOT/../shared/data/tinystories_val.txt
export OMP_WAIT_POLICY=passive
mkdir -p "$WORK"; cd "$WORK"

# The splits, exactly as lowbit's load_stories makes them (stories separated by blank lines).
[ -s eval.txt ] || python3 - "$TEXT" <<'PY'
import re, sys
t = open(sys.argv[1], encoding="utf-8").read()
st = [s.strip() for s in re.split(r"\n\s*\n", t) if s.strip()]
n = int(len(st) * 0.1)
open("calib.txt", "w").write("\n\n".join(st[:n]) + "\n")
open("eval.txt", "w").write("\n\n".join(st[n:]) + "\n")
PY
if [ ! -s ref-f32.gguf ]; then
  case "$MODEL" in
    *Q4_1.gguf|*.bin|*/) "$LOWBIT" convert --model "$MODEL" -o ref-f32.gguf --format gguf >/dev/null ;;
    *) "$LLAMA_BIN/llama-quantize" --allow-requantize "$MODEL" ref-f32.gguf F32 1 > ref-quant.log 2>&1 ;;
  esac
fi
[ -s ref.kld ] || "$PPL_BIN" -m ref-f32.gguf -f eval.txt -c 128 --chunks "$CHUNKS" -t "$THREADS" \
  --kl-divergence-base ref.kld > ref.log 2>&1
if [ -z "${SKIP_LLAMA:-}" ] && [ ! -s imatrix.gguf ]; then
  "$LLAMA_BIN/llama-imatrix" -m ref-f32.gguf -f calib.txt -c 128 --chunks "$CALIB_CHUNKS" -t "$THREADS" \
    -o imatrix.gguf > imatrix.log 2>&1
fi

score() {  # file -> "MB | KLD | top-1"
  local f=$1 log=${1%.gguf}.kld.log
  [ -s "$log" ] || "$PPL_BIN" -m "$f" -f eval.txt -c 128 --chunks "$CHUNKS" -t "$THREADS" \
    --kl-divergence-base ref.kld --kl-divergence > "$log" 2>&1
  local mb kld top
  mb=$(python3 -c "import os,sys;print(f'{os.path.getsize(sys.argv[1])/1e6:.1f}')" "$f")
  kld=$(grep -m1 "^Mean    KLD:" "$log" | awk '{print $3" ± "$5}')
  top=$(grep -m1 "^Same top p:" "$log" | awk '{print $4" ± "$6}')
  echo "$mb | $kld | $top"
}

echo "| type | llama-quantize MB | KLD | top-1 % | llama-quantize --imatrix MB | KLD | top-1 % | lowbit MB | KLD | top-1 % | lowbit / imatrix KLD |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for T in $TYPES; do
  t=$(echo "$T" | tr 'A-Z' 'a-z')
  a="- | - | -"; b="- | - | -"; c="- | - | -"
  if [ -z "${SKIP_LLAMA:-}" ]; then
    [ -s lq-$t.gguf ] || "$LLAMA_BIN/llama-quantize" ref-f32.gguf lq-$t.gguf "$T" "$THREADS" > lq-$t.log 2>&1
    [ -s lqi-$t.gguf ] || "$LLAMA_BIN/llama-quantize" --imatrix imatrix.gguf ref-f32.gguf lqi-$t.gguf "$T" "$THREADS" > lqi-$t.log 2>&1
    a=$(score lq-$t.gguf); b=$(score lqi-$t.gguf)
  fi
  if [ -z "${SKIP_LOWBIT:-}" ]; then
    [ -s lb-$t.gguf ] || "$LOWBIT" quantize --model "${LOWBIT_MODEL:-$MODEL}" --scheme "gguf-$t" --method gptq --calib "$TEXT" \
      --calib-tokens $((CALIB_CHUNKS * 128)) --ctx 128 --format gguf -o lb-$t.gguf > lb-$t.log 2>&1
    c=$(score lb-$t.gguf)
  fi
  ratio=$(python3 -c "
import sys
try: print(f'{float(sys.argv[2].split()[0])/float(sys.argv[1].split()[0]):.2f}')
except Exception: print('-')" "$(echo "$b" | cut -d'|' -f2)" "$(echo "$c" | cut -d'|' -f2)")
  echo "| $T | $a | $b | $c | $ratio |"
done

#!/usr/bin/env bash
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M (issue 14): lowbit against llama.cpp's llama-bench on the same
# file, 2 threads, prefill 128 and 512 tokens and decode, with the DRAM read bandwidth measured in the
# same run and the decode bound it implies (bandwidth ÷ bytes one token reads); then the peak RSS of
# `generate` and `eval`. Run scripts/setup first (the model) and build the release preset.
#
#   bench/qwen2_bench.sh [LLAMA_BENCH] [OUT_DIR]     default /work/llamacpp/src/build/bin/llama-bench, /tmp/qwen2_bench
#
# lowbit's rows: k-quant blocks × Q8_K activations (llama.cpp's path, the default of generate), then ×
# fp32 activations. For the AVX2 comparison (lowbit's ISA) pass a llama-bench built with
# -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lowbit="$root/build/release/lowbit"
llama_bench=${1:-/work/llamacpp/src/build/bin/llama-bench}
out=${2:-/tmp/qwen2_bench}
model="${XDG_CACHE_HOME:-$HOME/.cache}/lowbit/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
[ -f "$model" ] || { echo "qwen2_bench: $model missing: run scripts/setup" >&2; exit 2; }
mkdir -p "$out"
# OpenMP's default wait policy: llama.cpp's threads are OpenMP's too, and on an idle machine spinning
# between the ~300 parallel regions of a decode step is what both engines want (passive waiting cost
# lowbit 17% and llama.cpp 30% of decode speed here); on a loaded machine export OMP_WAIT_POLICY=passive.
export LOWBIT_THREADS=2 OMP_NUM_THREADS=2
for p in 128 512; do
  "$lowbit" bench model --model "$model" --prefill "$p" --decode 32 --llama-bench "$llama_bench" --limits \
    --json "$out/bench_p$p.json" | tee "$out/bench_p$p.txt"
done
# Peak RSS (GNU time's maximum resident set size, KiB) of a 32-token generate and of a short eval.
/usr/bin/time -f "generate peak RSS %M KiB, %e s" "$lowbit" generate --model "$model" --prompt "def quicksort(a):" -n 32 --ids

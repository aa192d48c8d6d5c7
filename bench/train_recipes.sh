#!/usr/bin/env bash
# Trains one small Llama from scratch per precision recipe (same seed, same windows) on the
# TinyStories train split and prints the docs/results.md table: final train / validation loss,
# gap to fp32, tokens/s, peak RSS, bytes per token of cached GEMM inputs and of all saved
# activations. One process per recipe so peak RSS is that recipe's own.
#   bench/train_recipes.sh [OUTDIR] [extra lowbit train flags]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/out/train_bench}
shift || true
lowbit=${LOWBIT:-$root/build/release/lowbit}
mkdir -p "$out"
model=${MODEL:-dim=128,layers=4,heads=4,kv-heads=2,hidden=344,vocab-from=$root/../shared/models/tok512.bin}
steps=${STEPS:-100}
for r in ${RECIPES:-fp32 bf16 fp8-tensor-delayed fp8-blockwise fp8-seed}; do
  "$lowbit" train --init "$model" --data "$root/../shared/data/tinystories_val.txt" --recipe "$r" \
    --steps "$steps" --batch 16 --ctx 128 --lr 2e-3 --seed 1 --val-windows 32 --eval-every 10 \
    --log "$out/$r.jsonl" --json "$out/$r.json" "$@" >/dev/null
done
python3 - "$out" ${RECIPES:-fp32 bf16 fp8-tensor-delayed fp8-blockwise fp8-seed} <<'PY'
import json, sys
out, recipes = sys.argv[1], sys.argv[2:]
runs = [json.load(open(f"{out}/{r}.json"))[0] for r in recipes]
ref = runs[0]
print(f"| recipe | final train loss | vs {ref['recipe']} | final val loss | vs {ref['recipe']} | tok/s | peak RSS MiB | cached GEMM inputs B/token | saved activations B/token |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in runs:
    gt = 100 * (r["final_train_loss"] - ref["final_train_loss"]) / ref["final_train_loss"]
    gv = 100 * (r["final_val_loss"] - ref["final_val_loss"]) / ref["final_val_loss"]
    print(f"| {r['recipe']} | {r['final_train_loss']:.4f} | {gt:+.2f}% | {r['final_val_loss']:.4f} | {gv:+.2f}% | {r['tokens_per_s']:.0f} | "
          f"{r['peak_rss_mib']:.0f} | {r['cached_linear_input_bytes_per_token']} | {r['saved_activation_bytes_per_token']} |")
print(f"\n{ref['parameters']} parameters, {ref['steps']} steps, {ref['tokens']} training tokens per recipe")
PY

#!/usr/bin/env bash
# The fp32-vs-FP8 gap against the seed-to-seed spread: trains one small Llama from scratch per
# (recipe, seed) — the seed sets both the initial weights and the order of training windows — and
# prints every run, then per recipe the mean final validation loss, its spread over seeds, and
# the gap to fp32 paired by seed (same initial weights, same windows). One process per run, one
# thread (LOWBIT_THREADS=1), niced: the box is shared.
#   bench/train_seeds.sh [OUTDIR] [extra lowbit train flags]
#   env: RECIPES="fp32 bf16 fp8-blockwise" SEEDS="1 2 3 4" STEPS=1000 MODEL=dim=..,layers=.. BATCH=8 CTX=64
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/out/train_seeds}
shift || true
lowbit=${LOWBIT:-$root/build/release/lowbit}
mkdir -p "$out"
model=${MODEL:-dim=64,layers=2,heads=4,kv-heads=2,hidden=172,vocab-from=$root/../shared/models/tok512.bin}
recipes=${RECIPES:-fp32 bf16 fp8-blockwise}
seeds=${SEEDS:-1 2 3 4}
steps=${STEPS:-1000}
for s in $seeds; do
  for r in $recipes; do
    [ -s "$out/$r.s$s.json" ] && continue  # already run (rerun: delete OUTDIR)
    LOWBIT_THREADS=${LOWBIT_THREADS:-1} OMP_WAIT_POLICY=passive nice "$lowbit" train --init "$model" \
      --data "$root/../shared/data/tinystories_val.txt" --recipe "$r" --steps "$steps" --batch "${BATCH:-8}" \
      --ctx "${CTX:-64}" --lr "${LR:-2e-3}" --seed "$s" --val-windows "${VAL_WINDOWS:-64}" --eval-every "$((steps / 10))" \
      --log "$out/$r.s$s.jsonl" --json "$out/$r.s$s.json" "$@" >/dev/null
  done
done
python3 - "$out" "$recipes" "$seeds" <<'PY'
import json, statistics as st, sys
out, recipes, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
run = {(r, s): json.load(open(f"{out}/{r}.s{s}.json"))[0] for r in recipes for s in seeds}
ref = recipes[0]
print("| recipe | " + " | ".join(f"seed {s} val" for s in seeds) + " | mean val | spread (max−min) | gap of means vs "
      + ref + " | paired gap per seed: mean [min, max] |")
print("|---|" + "---:|" * (len(seeds) + 4))
mref = st.mean(run[(ref, s)]["final_val_loss"] for s in seeds)
for r in recipes:
    v = [run[(r, s)]["final_val_loss"] for s in seeds]
    gaps = [100 * (run[(r, s)]["final_val_loss"] / run[(ref, s)]["final_val_loss"] - 1) for s in seeds]
    m = st.mean(v)
    print(f"| {r} | " + " | ".join(f"{x:.4f}" for x in v) + f" | {m:.4f} | {100 * (max(v) - min(v)) / m:.2f}% | "
          f"{100 * (m / mref - 1):+.2f}% | {st.mean(gaps):+.2f}% [{min(gaps):+.2f}%, {max(gaps):+.2f}%] |")
j = run[(ref, seeds[0])]
print(f"\n{j['parameters']} parameters, {j['steps']} steps, {j['tokens']} training tokens per run; tok/s "
      + ", ".join(f"{r} {st.mean(run[(r, s)]['tokens_per_s'] for s in seeds):.0f}" for r in recipes))
PY

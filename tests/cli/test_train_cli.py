"""lowbit train, checked from outside: a tiny model trained from scratch on the bundled stories
writes a checkpoint that eval, generate and quantize load; --resume continues bit for bit;
--compare writes a table and an SVG; --dry-run says what runs in which format; bad input is
named (exit 2, nothing written) and a diverged run stops with the last checkpoint intact.

Usage: test_train_cli.py LOWBIT_BINARY. Exits 77 (skip) when ../shared is missing.
"""
import json
import os
import shutil
import sys
import tempfile

from clitest import LOWBIT, ROOT, bad_input, check, finish, run  # noqa: F401

MODELS = os.path.join(ROOT, "..", "shared", "models")
TOK = os.path.join(MODELS, "tok512.bin")
TEXT = os.path.join(ROOT, "..", "shared", "data", "tinystories_val.txt")
if not os.path.exists(TEXT) or not os.path.exists(TOK):
    print(f"SKIP: {TEXT} or {TOK} not found (../shared is missing)")
    sys.exit(77)

INIT = f"dim=16,layers=1,heads=2,kv-heads=1,hidden=24,vocab-from={TOK}"
BASE = ["train", "--init", INIT, "--data", TEXT, "--batch", "2", "--ctx", "16", "--val-windows", "2", "--lr", "3e-3"]


def log_losses(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


with tempfile.TemporaryDirectory() as d:
    p = run("train", "--help")
    check(p.returncode == 0 and "--recipe" in p.stdout and "--compare" in p.stdout, "train --help")

    p = run(*BASE, "--recipe", "fp8-blockwise", "--dry-run")
    check(p.returncode == 0, f"dry-run: exit {p.returncode} {p.stderr}")
    for want in ["e4m3:block1x128", "e4m3:block128x128", "wgrad", "validation", "parameters"]:
        check(want in p.stdout, f"dry-run names {want}: {p.stdout}")

    out = os.path.join(d, "full")
    log = os.path.join(d, "full.jsonl")
    js = os.path.join(d, "full.json")
    p = run(*BASE, "--steps", "4", "-o", out, "--log", log, "--json", js)
    check(p.returncode == 0, f"train: exit {p.returncode} {p.stderr}")
    full = log_losses(log)
    check([e["step"] for e in full] == [1, 2, 3, 4], f"log has steps 1..4: {full}")
    check(all(k in full[-1] for k in ["loss", "lr", "grad_norm", "loss_scale", "tok_s", "val_loss"]), f"log fields: {full[-1]}")
    summary = json.load(open(js))
    check(summary[0]["recipe"] == "fp32", f"--json recipe: {summary}")
    for k in ["final_train_loss", "final_val_loss", "tokens_per_s", "peak_rss_mib"]:
        check(k in summary[0], f"--json has {k}")
    check(os.path.exists(os.path.join(out, "model.safetensors")) and os.path.exists(os.path.join(out, "train_state.bin")),
          "checkpoint files")
    # Other commands load it.
    p = run("eval", "--model", out, "--text", TEXT, "--ctx", "16", "--max-windows", "4")
    check(p.returncode == 0, f"eval loads the checkpoint: {p.stderr}")
    p = run("generate", "--model", out, "--prompt", "Once", "-n", "4", "--ids")
    check(p.returncode == 0 and len(p.stdout.split()) >= 1, f"generate loads the checkpoint: {p.stderr}")
    p = run("quantize", "--model", out, "--scheme", "w8a16", "-o", os.path.join(d, "q"))
    check(p.returncode == 0, f"quantize loads the checkpoint: {p.stderr}")

    # Resume: 2 steps, then the rest from the checkpoint, gives the same losses bit for bit.
    half = os.path.join(d, "half")
    p = run(*BASE, "--steps", "4", "--until", "2", "-o", half)
    check(p.returncode == 0, f"train --until: {p.stderr}")
    log2 = os.path.join(d, "resumed.jsonl")
    p = run("train", "--resume", half, *BASE[3:], "--steps", "4", "--log", log2)
    check(p.returncode == 0, f"train --resume: {p.stderr}")
    resumed = log_losses(log2)
    check([e["step"] for e in resumed] == [3, 4], f"resumed steps: {resumed}")
    check([e["loss"] for e in resumed] == [e["loss"] for e in full[2:]],
          f"resumed losses {[e['loss'] for e in resumed]} != {[e['loss'] for e in full[2:]]}")

    # --compare: one row per recipe and an SVG naming both.
    svg = os.path.join(d, "c.svg")
    cj = os.path.join(d, "c.json")
    one_val = [*BASE[:10], "1", *BASE[11:]]  # --val-windows 1: the validation forward has another batch size
    check(BASE[9] == "--val-windows", "BASE layout")
    p = run(*one_val, "--steps", "2", "--compare", "fp32,fp8-blockwise", "--plot", svg, "--json", cj)
    check(p.returncode == 0, f"--compare: {p.stderr}")
    rows = json.load(open(cj))
    check([r["recipe"] for r in rows] == ["fp32", "fp8-blockwise"], f"--compare --json rows: {rows}")
    # Bytes per token of a training micro-batch: fp32 keeps every linear input (dim 16: wq/wk/wv, wo,
    # w1/w3 inputs; hidden 24: w2's; the classifier's 16) as 4-byte floats.
    check(rows[0]["cached_linear_input_bytes_per_token"] == (3 * 16 + 24 + 16) * 4, f"fp32 cached bytes/token: {rows[0]}")
    # Peak RSS is each recipe's own (the high-water mark is reset before each one) on Linux.
    check(all(r["peak_rss_scope"] == "recipe" and r["peak_rss_mib"] > 0 for r in rows), f"per-recipe peak RSS: {rows}")
    check("| fp32 |" in p.stdout and "| fp8-blockwise |" in p.stdout, f"--compare table: {p.stdout}")
    check(os.path.exists(svg) and "fp8-blockwise" in open(svg).read() and "<polyline" in open(svg).read(), "--compare SVG")

    # Bad input: named, exit 2, nothing written.
    o = os.path.join(d, "bad")
    bad_input([*BASE, "--recipe", "fp4", "-o", o], "fp4", "unknown recipe", out=o)
    bad_input(["train", "--init", f"dim=16,layers=1,heads=3,hidden=24,vocab-from={TOK}", "--data", TEXT, "-o", o],
              "heads=3", "heads do not divide dim", out=o)
    bad_input(["train", "--init", f"dim=16,layers=1,heads=4,kv-heads=3,hidden=24,vocab-from={TOK}", "--data", TEXT, "-o", o],
              "kv-heads=3", "kv-heads do not divide heads", out=o)
    empty = os.path.join(d, "empty.txt")
    open(empty, "w").close()
    bad_input([*BASE[:3], "--data", empty, "-o", o], empty, "empty data", out=o)
    bad_input([*BASE, "--steps", "0", "-o", o], "--steps 0", "--steps 0", out=o)
    bad_input([*BASE, "--ctx", "100000", "-o", o], "--ctx", "context too long", out=o)

    # A diverging run (absurd learning rate) stops with a named error; the checkpoint it saved
    # before stays loadable.
    div = os.path.join(d, "div")
    p = run(*BASE, "--steps", "2", "-o", div)
    check(p.returncode == 0, f"train before diverging: {p.stderr}")
    # --resume refuses flags that differ from the run's (one line naming the flag, exit 2, nothing written).
    p = run("train", "--resume", div, *BASE[3:-2], "--lr", "1e30", "--steps", "2", "-o", div)
    check(p.returncode == 2 and "--lr" in p.stderr and "checkpoint" in p.stderr and len(p.stderr.strip().splitlines()) == 1,
          f"--resume with another --lr: exit {p.returncode} ({p.stderr.strip()})")
    p = run("train", "--resume", div, *BASE[3:], "--steps", "3", "-o", div)
    check(p.returncode == 2 and "--steps" in p.stderr, f"--resume with another --steps: exit {p.returncode} ({p.stderr.strip()})")
    p = run("train", "--resume", div, *BASE[3:], "--recipe", "bf16", "--steps", "2", "-o", div)
    check(p.returncode == 2 and "recipe" in p.stderr, f"--resume with another --recipe: exit {p.returncode} ({p.stderr.strip()})")
    # Continuing the weights as a new run (--model) with an absurd learning rate diverges.
    # (-o may not name the --model folder: that would overwrite the input.)
    div2 = os.path.join(d, "div2")
    shutil.copytree(div, div2)  # the output folder holds a good checkpoint before the run
    p = run("train", "--model", div, *BASE[3:-2], "--lr", "1e30", "--clip", "0", "--steps", "6", "--save-every", "1", "-o", div2)
    check(p.returncode == 1, f"diverged run: exit {p.returncode}, expected 1 ({p.stderr.strip()})")
    check("step" in p.stderr and "diverged" in p.stderr, f"divergence named: {p.stderr.strip()}")
    check("intact" in p.stderr, f"mentions the intact checkpoint: {p.stderr.strip()}")
    p = run("generate", "--model", div2, "--prompt", "Once", "-n", "1", "--ids")
    check(os.path.exists(os.path.join(div2, "train_state.bin")) and p.returncode == 0,
          f"last good checkpoint loads after divergence: {p.stderr}")

finish("train cli ok")

"""lowbit qat, checked from outside: a short run on stories260K writes a model that eval loads and
scores exactly as qat's own table says, --json carries the per-step log, the three-row table and
peak RSS, and bad flags are named (exit 2, nothing written).

Usage: test_qat_cli.py LOWBIT_BINARY. Exits 77 (skip) when ../shared is missing.
"""
import json
import math
import os
import re
import sys
import tempfile

from clitest import LOWBIT, ROOT, bad_input, check, finish, run  # noqa: F401

MODELS = os.path.join(ROOT, "..", "shared", "models")
MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.bin")
TEXT = os.path.join(ROOT, "..", "shared", "data", "tinystories_val.txt")
if not all(os.path.exists(p) for p in (MODEL, TOK, TEXT)):
    print("SKIP: ../shared is missing")
    sys.exit(77)

BASE = ["qat", "--model", MODEL, "--tokenizer", TOK, "--scheme", "w4a16-g32", "--data", TEXT, "--steps", "3",
        "--ctx", "32", "--batch", "2", "--calib-windows", "4", "--lr", "1e-3"]

with tempfile.TemporaryDirectory() as d:
    p = run("qat", "--help")
    check(p.returncode == 0 and all(f in p.stdout for f in ["--init", "--loss", "--lsq", "--min-lr", "--eval", "--json"]), "qat --help")

    out, js = os.path.join(d, "q"), os.path.join(d, "q.json")
    p = run(*BASE, "--loss", "ce+kd", "-o", out, "--eval", TEXT, "--eval-windows", "6", "--json", js)
    check(p.returncode == 0, f"qat: exit {p.returncode} {p.stderr}")
    rows = [l for l in p.stdout.splitlines() if l.startswith("| ") and "w4a16-g32" in l]
    check(len(rows) == 3 and rows[0].startswith("| rtn") and rows[1].startswith("| gptq") and rows[2].startswith("| qat"),
          f"table rows rtn, gptq, qat: {p.stdout}")
    s = json.load(open(js))
    check([e["step"] for e in s["log"]] == [1, 2, 3], f"--json log steps: {s.get('log')}")
    check(all(k in s["eval"] for k in ["rtn", "init", "qat"]) and s["peak_rss_mib"] > 0, f"--json eval and rss: {s}")
    check(s["log"][0]["ce"] > 0 and s["log"][0]["kd"] > 0, f"ce+kd logs both parts: {s['log'][0]}")
    lrs = [e["lr"] for e in s["log"]]
    want = [1e-4 + 0.5 * (1 + math.cos(math.pi * k / 3)) * 9e-4 for k in range(3)]  # cosine to 0.1 x 1e-3 at step 3
    check(abs(s["min_lr"] - 0.1) < 1e-7 and all(abs(a - b) < 1e-9 for a, b in zip(lrs, want)), f"lr per step {lrs}, expected {want}")
    # eval of the written model reproduces qat's own KLD for it.
    p = run("eval", "--model", out, "--ref", MODEL, "--tokenizer", TOK, "--text", TEXT, "--split", "eval", "--ctx", "128",
            "--max-windows", "6", "--json", os.path.join(d, "e.json"))
    check(p.returncode == 0, f"eval loads the qat output: {p.stderr}")
    if p.returncode == 0:
        kld = json.load(open(os.path.join(d, "e.json")))["kld_mean"]
        check(kld == s["eval"]["qat"]["kld_mean"], f"eval of the saved model: KLD {kld} vs qat's {s['eval']['qat']['kld_mean']}")

    bad_input([*BASE, "--loss", "mse", "-o", os.path.join(d, "x")], "--loss", "unknown loss")
    bad_input([*BASE, "--init", "smoothquant", "-o", os.path.join(d, "x")], "--init", "init smoothquant")
    bad_input([*BASE, "--steps", "0", "-o", os.path.join(d, "x")], "--steps", "zero steps")
    bad_input([*BASE, "--min-lr", "1.5", "-o", os.path.join(d, "x")], "--min-lr", "schedule floor above the peak")
    bad_input([*BASE, "--ctx", "100000", "-o", os.path.join(d, "x")], "--ctx", "context too long")
    # A spec GGUF cannot hold is refused before training (in well under the run's time), nothing written.
    long_w3 = [{"w4a16-g32": "w3a16-g64", "3": "100000"}.get(x, x) for x in BASE]
    bad_input([*long_w3, "-o", os.path.join(d, "x.gguf")],
              "GGUF cannot hold", "w3a16-g64 to a .gguf")
    check(not os.path.exists(os.path.join(d, "x.gguf")), "nothing written for a GGUF that cannot hold the scheme")
    check(not os.path.exists(os.path.join(d, "x")), "nothing written on bad input")
finish()

"""Determinism (issue 21): the same command gives the same bytes on 1 and 2 threads.

Usage: test_determinism_cli.py LOWBIT_BINARY. Exits 77 (skip) when ../shared is missing.
GPTQ and AWQ quantization of the bundled stories260K (GGUF output), and a few training steps from
--init (checkpoint folder and the per-step log, timing fields aside), each run with
LOWBIT_THREADS=1 and LOWBIT_THREADS=2 into same-named files in two folders, compared byte for byte.
"""
import json
import os
import sys
import tempfile

from clitest import ROOT, check, finish, run

MODELS = os.path.join(ROOT, "..", "shared", "models")
MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.bin")
TEXT = os.path.join(ROOT, "..", "shared", "data", "tinystories_val.txt")
if not os.path.exists(MODEL) or not os.path.exists(TEXT):
    print(f"SKIP: {MODEL} or {TEXT} not found (../shared is missing)")
    sys.exit(77)

TIMING = {"tok_s", "seconds", "elapsed_s"}  # wall-clock fields of the train log


def files(folder):
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def log_without_timing(path):
    rows = [json.loads(line) for line in open(path)]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


COMMANDS = {
    "gptq": ["quantize", "--model", MODEL, "--scheme", "w4a16-g32", "--method", "gptq", "--act-order", "--calib", TEXT,
             "--calib-tokens", "1024", "--format", "gguf", "-o", "{d}/q.gguf"],
    "awq": ["quantize", "--model", MODEL, "--scheme", "w4a16-g32", "--method", "awq", "--calib", TEXT,
            "--calib-tokens", "1024", "--format", "gguf", "-o", "{d}/q.gguf"],
    "train": ["train", "--init", f"dim=32,layers=2,heads=4,kv-heads=2,hidden=64,vocab-from={TOK}", "--data", TEXT,
              "--batch", "4", "--ctx", "32", "--val-windows", "2", "--steps", "4", "--eval-every", "2", "-o", "{d}/ckpt",
              "--log", "{d}/log.jsonl"],
}

with tempfile.TemporaryDirectory() as tmp:
    for name, args in COMMANDS.items():
        got = {}
        for threads in (1, 2):
            d = os.path.join(tmp, f"{name}_t{threads}")
            os.makedirs(d)
            p = run(*[a.format(d=d) for a in args], env={"LOWBIT_THREADS": str(threads), "OMP_WAIT_POLICY": "passive"})
            check(p.returncode == 0, f"{name} with {threads} thread(s): exit {p.returncode}: {p.stderr.strip()[-300:]!r}")
            outs = files(d)
            if "log.jsonl" in outs:
                outs["log.jsonl"] = log_without_timing(os.path.join(d, "log.jsonl"))
            got[threads] = outs
        check(len(got[1]) > 0 and sorted(got[1]) == sorted(got[2]), f"{name}: different files: {sorted(got[1])} vs {sorted(got[2])}")
        for f in got[1]:
            check(got[1][f] == got[2].get(f), f"{name}: {f} differs between 1 and 2 threads")
        print(f"{name}: {len(got[1])} file(s) identical on 1 and 2 threads" if got[1] == got[2] else f"{name}: differs")

finish("determinism checks ok")

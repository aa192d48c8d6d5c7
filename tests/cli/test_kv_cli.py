"""The quantized KV cache from the command line: eval --kv rows sharing one reference pass with
kv_spec / kv_bytes_per_token in the JSON, a KLD-by-position curve per row, generate --kv, a saved
model that records its cache spec, and bad specs as one-line errors (exit 2, nothing written).

Usage: test_kv_cli.py LOWBIT_BINARY.
"""
import json
import os
import struct
import sys
import tempfile

from clitest import SHARED, bad_input, check, finish, run
MODEL = os.path.join(SHARED, "models", "stories260K.bin")
TEXT = os.path.join(SHARED, "data", "tinystories_val.txt")

if not os.path.exists(MODEL):
    print(f"SKIP: {MODEL} not found (../shared is missing)")
    sys.exit(77)

with tempfile.TemporaryDirectory() as tmp:
    out_json = os.path.join(tmp, "kv.json")
    out_svg = os.path.join(tmp, "kv.svg")
    p = run("eval", "--model", MODEL, "--text", TEXT, "--split", "eval", "--max-windows", "3", "--kv",
            "kv-int8;kv-int4-kivi", "--kv", "int4:g8", "--json", out_json, "--plot", out_svg)
    check(p.returncode == 0, f"eval --kv failed: {p.stderr}")
    rows = json.load(open(out_json))
    check(isinstance(rows, list) and len(rows) == 3, f"three kv rows expected: {rows!r}"[:300])
    if len(rows) == 3:
        int8, kivi, int4 = rows
        check(int8["kv_spec"] == "k=int8:token,v=int8:token", f"kv_spec {int8['kv_spec']}")
        check(kivi["kv_spec"] == "k=int4:col:asym,v=int4:token:asym,block=64", f"kv_spec {kivi['kv_spec']}")
        # stories260K: 5 layers, 4 kv heads of 8: int8 codes 32 B + 4 fp16 scales per token per layer, K and V.
        check(int8["kv_bytes_per_token"] == 2 * 5 * (32 + 8), f"int8 bytes/token {int8['kv_bytes_per_token']}")
        check(int4["kv_bytes_per_token"] == 2 * 5 * (16 + 8), f"int4 bytes/token {int4['kv_bytes_per_token']}")
        check(kivi["kv_bits_per_value"] == 4 + 0.5 * (32 / 64 + 32 / 8), f"kivi bits {kivi['kv_bits_per_value']}")
        check(len({r["ref_ppl"] for r in rows}) == 1, "rows do not share one reference pass")
        check(0 < int8["kld_mean"] < 0.01 and int8["top1"] > 0.95, f"kv-int8 figures implausible: {int8['kld_mean']}")
        check(int4["kld_mean"] > int8["kld_mean"], "4-bit per-token cache should cost more than int8")
        check(kivi["kld_mean"] < int4["kld_mean"], "KIVI (per-channel keys) should beat per-token int4 keys")
        check(all(r["inputs"]["kv"] == "kv-int8;kv-int4-kivi;int4:g8" for r in rows), "inputs.kv")
    check("| fp32 + kv-int8 | k=int8:token,v=int8:token |" in p.stdout, f"kv table: {p.stdout!r}")
    svg = open(out_svg).read() if os.path.exists(out_svg) else ""
    check(svg.startswith("<svg") and svg.count("<polyline") == 3, "plot: one curve per kv row")

    p = run("generate", "--model", MODEL, "--prompt", "Once upon a time", "-n", "8", "--ids", "--kv", "kv-int8")
    check(p.returncode == 0 and len(p.stdout.split()) == 8, f"generate --kv: {p.stdout!r} {p.stderr!r}")
    check("bytes/token" in p.stderr, f"generate --kv reports no cache size: {p.stderr!r}")

    saved = os.path.join(tmp, "q")
    p = run("quantize", "--model", MODEL, "--scheme", "w8a16", "--kv", "kv-int8-g32", "-o", saved, "--format", "safetensors")
    check(p.returncode != 0 and "group 32 does not divide head dim 8" in p.stderr, f"quantize --kv bad group: {p.stderr!r}")
    p = run("quantize", "--model", MODEL, "--scheme", "w8a16", "--kv", "kv-int8", "-o", saved, "--format", "safetensors")
    check(p.returncode == 0, f"quantize --kv: {p.stderr}")
    with open(os.path.join(saved, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))["__metadata__"]
    check(meta.get("lowbit.kv_cache") == "k=int8:token,v=int8:token", f"saved kv spec: {meta.get('lowbit.kv_cache')}")
    check(meta.get("lowbit.kv_cache.llama_cpp_cache_type_k") == "none", "int8 per head is no llama.cpp cache type")
    saved_json = os.path.join(tmp, "saved.json")
    p = run("eval", "--model", saved, "--text", TEXT, "--max-windows", "2", "--json", saved_json)
    check(p.returncode == 0 and json.load(open(saved_json))["kv_spec"] == "k=int8:token,v=int8:token",
          f"a saved model does not run with its kv cache: {p.stderr}")

    never = os.path.join(tmp, "never.json")
    bad_input(["eval", "--model", MODEL, "--text", TEXT, "--kv", "kv-int4-g32", "--json", never], "head dim 8",
              "group not dividing the head dim", out=never)
    bad_input(["eval", "--model", MODEL, "--text", TEXT, "--kv", "kv-int9", "--json", never], "kv-int9", "unknown kv name", out=never)
    bad_input(["eval", "--model", MODEL, "--text", TEXT, "--kv", "k=int8:token"], "needs both", "kv spec without values")
    bad_input(["generate", "--model", MODEL, "--prompt", "x", "--kv", "int4:g32"], "group 32 does not divide head dim 8",
              "generate --kv bad group")
    bad_input(["bench", "model", "--model", MODEL, "--prefill", "8", "--kv", "nf4:token"], "nf4", "bench --kv bad element")

finish("all kv CLI checks passed")

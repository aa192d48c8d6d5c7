"""lowbit quantize from the command line: the plan, the methods end to end on the bundled
model, the JSON summary, and bad input (exit 2, one 'lowbit: ' line naming what is wrong,
no stdout, no output file).

Usage: test_quantize_cli.py LOWBIT_BINARY. Exits 77 (skip) when ../shared is missing.
"""
import json
import os
import subprocess
import sys
import tempfile

from clitest import SHARED, bad_input, check, finish, run
MODEL = os.path.join(SHARED, "models", "stories260K.bin")
TEXT = os.path.join(SHARED, "data", "tinystories_val.txt")








if not os.path.exists(MODEL):
    print(f"SKIP: {MODEL} not found (../shared is missing)")
    sys.exit(77)

p = run("quantize", "--help")
check(p.returncode == 0 and "--method" in p.stdout and "--dry-run" in p.stdout, "quantize --help")

with tempfile.TemporaryDirectory() as tmp:
    # The plan: defaults by role, then overrides.
    p = run("quantize", "--model", MODEL, "--scheme", "w4a16-g128", "--dry-run")
    check(p.returncode == 0, f"dry-run failed: {p.stderr}")
    check("| layers.0.wq | 64x64 | int4:g128:sym:fp16 |" in p.stdout, f"dry-run: wq row missing: {p.stdout[:400]!r}")
    check("| layers.0.attn_norm | 64 | fp32 |" in p.stdout, "dry-run: norms must stay fp32")
    check("| tok_embeddings | 512x64 | fp16:tensor:sym:fp32:unit |" in p.stdout or "| tok_embeddings | 512x64 | fp16" in p.stdout,
          "dry-run: embedding fp16 by default")
    plan = os.path.join(tmp, "plan.json")
    with open(plan, "w") as f:
        json.dump({"layers.*.w2": "int8:row", "layers.4.*": "fp32"}, f)
    pj = os.path.join(tmp, "plan_out.json")
    p = run("quantize", "--model", MODEL, "--scheme", "w4a16-g128", "--plan", plan, "--dry-run", "--json", pj)
    check(p.returncode == 0, f"dry-run with plan failed: {p.stderr}")
    with open(pj) as f:
        j = json.load(f)
    specs = {t["name"]: t["spec"] for t in j["tensors"]}
    check(specs.get("layers.0.w2") == "int8:row:sym:fp32", f"override layers.*.w2: {specs.get('layers.0.w2')}")
    check(specs.get("layers.4.w2") == "fp32" and specs.get("layers.4.wq") == "fp32", "override layers.4.* (last wins)")
    check(specs.get("layers.1.wq") == "int4:g128:sym:fp16", "non-overridden linear keeps the scheme")

    # Methods end to end, with the summary.
    summary = os.path.join(tmp, "s.json")
    p = run("quantize", "--model", MODEL, "--scheme", "w4a16-g32", "--method", "gptq", "--calib", TEXT,
            "--calib-tokens", "1024", "--eval", TEXT, "--eval-windows", "4", "--json", summary)
    check(p.returncode == 0, f"gptq failed: {p.stderr}")
    check("| gptq w4a16-g32 |" in p.stdout, f"gptq: no eval row: {p.stdout!r}")
    with open(summary) as f:
        s = json.load(f)
    for key in ("method", "scheme", "calib_tokens", "seconds", "peak_activation_bytes", "bpw", "size_bytes", "linears", "eval"):
        check(key in s, f"summary lacks {key}")
    check(s["method"] == "gptq" and s["calib_tokens"] == 1024, f"summary: {s['method']} {s['calib_tokens']}")
    check(len(s["linears"]) == 5 * 7, f"summary: {len(s['linears'])} linears")
    check(0 < s["eval"]["kld_mean"] < 1, f"summary eval kld {s['eval']['kld_mean']}")

    p = run("quantize", "--model", MODEL, "--scheme", "int8-channel", "--method", "outliers", "--threshold", "2",
            "--calib", TEXT, "--calib-tokens", "512", "--eval", TEXT, "--eval-windows", "2", "--json", summary)
    check(p.returncode == 0, f"outliers failed: {p.stderr}")
    check("outlier input columns" in p.stdout, f"outliers: no per-layer report: {p.stdout!r}")
    with open(summary) as f:
        s = json.load(f)
    check(any(l["outlier_cols"] > 0 for l in s["linears"]), "outliers: no outlier columns at threshold 2")

    for method, scheme in (("awq", "w4a16-g32"), ("smoothquant", "w8a8"), ("rtn", "nf4-g64")):
        p = run("quantize", "--model", MODEL, "--scheme", scheme, "--method", method, "--calib", TEXT,
                "--calib-tokens", "512", "--eval", TEXT, "--eval-windows", "2")
        check(p.returncode == 0 and f"| {method} {scheme} |" in p.stdout, f"{method} {scheme}: {p.stderr} {p.stdout!r}")

    # Written output loads back in eval and generate; GGUF for the llama.cpp-compatible schemes.
    out_st = os.path.join(tmp, "gptq-w4g32")
    p = run("quantize", "--model", MODEL, "--scheme", "w4a16-g32", "--method", "gptq", "--calib", TEXT,
            "--calib-tokens", "1024", "-o", out_st, "--eval", TEXT, "--eval-windows", "4", "--json", summary)
    check(p.returncode == 0 and os.path.isdir(out_st), f"gptq -o safetensors: {p.stderr}")
    with open(summary) as f:
        kld_in_memory = json.load(f)["eval"]["kld_mean"]
    ej = os.path.join(tmp, "e.json")
    p = run("eval", "--model", out_st, "--ref", MODEL, "--text", TEXT, "--split", "eval", "--max-windows", "4", "--json", ej)
    check(p.returncode == 0, f"eval of the saved model failed: {p.stderr}")
    if p.returncode == 0:
        with open(ej) as f:
            e = json.load(f)
        check(abs(e["kld_mean"] - kld_in_memory) <= 1e-9 * max(1.0, kld_in_memory),
              f"saved model KLD {e['kld_mean']} != in-memory {kld_in_memory}")
        check(abs(e["bpw"] - 4.5) < 0.1, f"saved model bpw {e['bpw']}")
    p = run("generate", "--model", out_st, "--prompt", "Once upon a time", "-n", "8", "--ids")
    check(p.returncode == 0 and len(p.stdout.split()) == 8, f"generate on the saved model: {p.stderr}")
    out_gguf = os.path.join(tmp, "q8.gguf")
    p = run("quantize", "--model", MODEL, "--scheme", "q8_0", "--method", "gptq", "--calib", TEXT,
            "--calib-tokens", "512", "-o", out_gguf)
    check(p.returncode == 0 and os.path.isfile(out_gguf), f"gptq -o gguf: {p.stderr}")
    before = open(out_gguf, "rb").read()
    p = run("generate", "--model", out_gguf, "--prompt", "Once upon a time", "-n", "8", "--ids")
    check(p.returncode == 0 and len(p.stdout.split()) == 8, f"generate on the GGUF: {p.stderr}")
    # A spec GGUF cannot hold: an error naming the tensor, the previous file intact.
    p = run("quantize", "--model", MODEL, "--scheme", "w4a16-g128", "-o", out_gguf)
    check(p.returncode != 0 and "layers.0" in p.stderr, f"w4a16-g128 as GGUF: exit {p.returncode} {p.stderr!r}")
    check(open(out_gguf, "rb").read() == before, "failed quantize changed the previous output")
    check(not [n for n in os.listdir(tmp) if n.startswith("q8.gguf.")], f"temp files left: {os.listdir(tmp)}")

    # Calibration and evaluation on the same split: a warning, still a result.
    p = run("quantize", "--model", MODEL, "--scheme", "w8a16", "--method", "gptq", "--calib", TEXT, "--calib-split", "eval",
            "--calib-tokens", "512", "--eval", TEXT, "--eval-windows", "2")
    check(p.returncode == 0 and "overlap" in p.stderr, f"overlap warning missing: {p.stderr!r}")

    # Bad input.
    out = os.path.join(tmp, "never.safetensors")
    short = os.path.join(tmp, "short.txt")
    with open(short, "w") as f:
        f.write("Once upon a time.\n")
    bad_input(["quantize", "--model", MODEL, "--scheme", "w4a16-g32", "--method", "gptq", "--calib", short,
               "--calib-split", "all", "-o", out], short, "calibration shorter than one window", out)
    bad_input(["quantize", "--model", MODEL, "--scheme", "int8-channel", "--method", "smoothquant", "--calib", TEXT,
               "-o", out], "w8a8", "smoothquant on a weight-only scheme", out)
    bad_input(["quantize", "--model", MODEL, "--scheme", "w4a16-g128", "--method", "outliers", "--calib", TEXT,
               "--eval", TEXT], "int8-channel", "outliers on int4")
    bad_input(["quantize", "--model", MODEL, "--scheme", "w8a8", "--method", "outliers", "--calib", TEXT, "-o", out],
              "cannot be written", "outliers to a file", out)
    bad_input(["quantize", "--model", MODEL, "--scheme", "nvfp4", "--method", "gptq", "--calib", TEXT, "-o", out],
              "gptq cannot use", "gptq with two-level scales", out)
    bad_input(["quantize", "--model", MODEL, "--scheme", "w4a16-g32", "--method", "gptq", "-o", out], "--calib",
              "gptq without calibration", out)
    bad_input(["quantize", "--model", MODEL, "--scheme", "w4a16-g32", "--method", "magic", "-o", out], "magic",
              "unknown method", out)
    with open(plan, "w") as f:
        f.write("{not json")
    bad_input(["quantize", "--model", MODEL, "--scheme", "w4a16-g32", "--plan", plan, "--dry-run"], plan, "bad plan JSON")
    bad_input(["quantize", "--model", os.path.join(tmp, "missing.bin"), "--scheme", "w8a8", "-o", out], "missing.bin",
              "missing model", out)

finish()

"""lowbit sensitivity and quantize --target-bpw / --policy deepseek from the command line, on the
bundled model with one short calibration window: the JSON shapes, a plan that round-trips through
--plan, the budget never exceeded, and bad input (exit 2, one line naming both numbers).

Usage: test_mixed_cli.py LOWBIT_BINARY. Exits 77 (skip) when ../shared is missing.
"""
import json
import os
import sys
import tempfile

from clitest import SHARED, bad_input, check, finish, run
MODEL = os.path.join(SHARED, "models", "stories260K.bin")
TEXT = os.path.join(SHARED, "data", "tinystories_val.txt")

if not os.path.exists(MODEL):
    print(f"SKIP: {MODEL} not found (../shared is missing)")
    sys.exit(77)

p = run("sensitivity", "--help")
check(p.returncode == 0 and "--candidates" in p.stdout and "--granularity" in p.stdout, "sensitivity --help")

with tempfile.TemporaryDirectory() as tmp:
    sens, svg = os.path.join(tmp, "sens.json"), os.path.join(tmp, "sens.svg")
    p = run("sensitivity", "--model", MODEL, "--calib", TEXT, "--candidates", "fp32,w3a16-g64,w8a16", "--granularity", "role",
            "--windows", "1", "--ctx", "64", "--json", sens, "--plot", svg)
    check(p.returncode == 0, f"sensitivity failed: {p.stderr}")
    check("| w2 |" in p.stdout and "Spearman" in p.stdout, f"sensitivity table: {p.stdout[:400]!r}")
    with open(sens) as f:
        s = json.load(f)
    check(len(s["units"]) == 7 and s["granularity"] == "role", "seven role units")
    check(all(u["dkld"][0] == 0.0 and u["dppl"][0] == 0.0 for u in s["units"]), "fp32 candidate: exactly zero")
    check(all(u["dkld"][1] > u["dkld"][2] for u in s["units"]), "3 bits cost more than 8 in every role")
    with open(svg) as f:
        check(f.read().startswith("<svg"), "plot is an SVG")

    # A budget: the chosen plan within it, written as the JSON --plan reads, and run from it.
    plan, summary = os.path.join(tmp, "plan.json"), os.path.join(tmp, "q.json")
    p = run("quantize", "--model", MODEL, "--target-bpw", "5", "--sensitivity", sens, "--plan-out", plan,
            "--eval", TEXT, "--eval-windows", "2", "--json", summary)
    check(p.returncode == 0, f"target-bpw failed: {p.stderr}")
    check("predicted KLD" in p.stdout and "| layers.0.w2 |" in p.stdout, f"target-bpw output: {p.stdout[-600:]!r}")
    with open(summary) as f:
        q = json.load(f)
    for key in ("target_bpw", "bits_per_weight", "predicted_kld", "plan", "realized_kld"):
        check(key in q, f"quantize --json lacks {key}")
    check(q["bits_per_weight"] <= 5.0 and q["bpw"] <= 5.0 + 1e-9, f"over budget: {q.get('bits_per_weight')} / {q.get('bpw')}")
    with open(plan) as f:
        pj = json.load(f)
    check(pj == q["plan"], "--plan-out and the summary's plan agree")
    back = os.path.join(tmp, "back.json")
    p = run("quantize", "--model", MODEL, "--scheme", "w4a16-g128", "--plan", plan, "--dry-run", "--json", back)
    check(p.returncode == 0, f"re-run from the plan failed: {p.stderr}")
    with open(back) as f:
        b = json.load(f)
    check({t["name"]: t["spec"] for t in b["tensors"] if t["role"] != "norm"} == pj, "plan round-trips through --plan")
    check(abs(b["bpw_linear"] - q["bits_per_weight"]) < 1e-9, "same bits per weight after the round trip")

    # --refine: the knapsack's plan refined with the mix measured on the calibration windows.
    refined = os.path.join(tmp, "r.json")
    p = run("quantize", "--model", MODEL, "--target-bpw", "5", "--sensitivity", sens, "--calib", TEXT, "--sens-windows", "2",
            "--refine", "2", "--eval", TEXT, "--eval-windows", "2", "--json", refined,
            env={"LOWBIT_THREADS": "1", "OMP_WAIT_POLICY": "passive"})  # dozens of tiny forwards: threads only spin
    check(p.returncode == 0, f"--refine failed: {p.stderr}")
    check("refine: " in p.stdout, f"refine summary line: {p.stdout[-600:]!r}")
    with open(refined) as f:
        r = json.load(f)
    rf = r.get("refine", {})
    for key in ("rounds", "calib_kld_before", "calib_kld_after", "evaluations", "knapsack_plan", "units_changed"):
        check(key in rf, f"quantize --json refine lacks {key}")
    check(rf["calib_kld_after"] <= rf["calib_kld_before"], f"refined mix measures worse: {rf}")
    check(1 <= len(rf["rounds"]) <= 2, f"rounds: {rf['rounds']}")
    check(r["bits_per_weight"] <= 5.0 and r["bpw"] <= 5.0 + 1e-9, f"refined plan over budget: {r['bits_per_weight']}")
    check(rf["knapsack_plan"] == q["plan"], "the knapsack's plan is the one --refine 0 chooses")
    # RTN: what the refinement measured is what the quantized model measures on the same windows.
    check(abs(r["measured_calib_kld"] - rf["calib_kld_after"]) <= 1e-9 * max(1.0, rf["calib_kld_after"]),
          f"measured_calib_kld {r['measured_calib_kld']} vs refine {rf['calib_kld_after']}")
    # --refine-exact with GPTQ: the start and each proposal measured on the sequential pipeline's model of the mix.
    exact = os.path.join(tmp, "x.json")
    p = run("quantize", "--model", MODEL, "--target-bpw", "5", "--sensitivity", sens, "--method", "gptq", "--calib", TEXT,
            "--calib-tokens", "1024", "--ctx", "128", "--sens-windows", "2", "--refine", "1", "--refine-trials", "2", "--refine-exact",
            "--eval", TEXT, "--eval-windows", "2",
            "--json", exact, env={"LOWBIT_THREADS": "1", "OMP_WAIT_POLICY": "passive"})
    check(p.returncode == 0, f"--refine-exact failed: {p.stderr}")
    check("(exact: the pipeline's model of each mix)" in p.stdout, f"refine-exact summary line: {p.stdout[-600:]!r}")
    with open(exact) as f:
        x = json.load(f)
    check(x.get("refine", {}).get("exact") is True and x["refine"]["method"] == "gptq", f"refine JSON: {x.get('refine')}")
    check(x["refine"]["calib_kld_after"] <= x["refine"]["calib_kld_before"], f"exact refinement measures worse: {x['refine']}")
    check(x["bits_per_weight"] <= 5.0, f"exact refinement over budget: {x['bits_per_weight']}")
    bad_input(["quantize", "--model", MODEL, "--scheme", "w4a16-g128", "--refine-exact", "--dry-run"], "--target-bpw",
              "--refine-exact without --target-bpw")
    bad_input(["quantize", "--model", MODEL, "--target-bpw", "5", "--sensitivity", sens, "--calib", TEXT, "--method", "gptq",
               "--refine", "1", "--refine-exact", "--no-sequential", "--dry-run"], "--no-sequential", "--refine-exact with --no-sequential")
    bad_input(["quantize", "--model", MODEL, "--scheme", "w4a16-g128", "--refine", "2", "--dry-run"], "--target-bpw",
              "--refine without --target-bpw")
    bad_input(["quantize", "--model", MODEL, "--target-bpw", "5", "--sensitivity", sens, "--refine", "2", "--dry-run"], "--calib",
              "--refine without calibration text")
    bad_input(["quantize", "--model", MODEL, "--target-bpw", "5", "--sensitivity", sens, "--calib", TEXT, "--refine", "-1",
               "--dry-run"], "--refine", "negative --refine")

    # A reference already on a candidate's grid (here: int4:g64 weights) makes that candidate measure as free: warned.
    q64 = os.path.join(tmp, "q64")
    p = run("quantize", "--model", MODEL, "--weights", "int4:g64:sym:fp16", "-o", q64)
    check(p.returncode == 0, f"quantize int4:g64 failed: {p.stderr}")
    p = run("sensitivity", "--model", q64, "--calib", TEXT, "--candidates", "int4:g64:sym:fp16,w3a16-g64", "--windows", "2",
            "--granularity", "role")
    check(p.returncode == 0, f"sensitivity of a quantized reference failed: {p.stderr}")
    check("warning: candidate int4:g64:sym:fp16 leaves every unit within 1e-9" in p.stderr and "w3a16-g64 leaves" not in p.stderr,
          f"lossless candidate warning: {p.stderr!r}")
    p = run("sensitivity", "--model", MODEL, "--calib", TEXT, "--candidates", "int4:g64:sym:fp16", "--windows", "2", "--granularity", "role")
    check(p.returncode == 0 and "warning" not in p.stderr, f"no warning on the fp32 model: {p.stderr!r}")

    p = run("quantize", "--model", MODEL, "--scheme", "w4a16-g128", "--policy", "deepseek", "--dry-run")
    check(p.returncode == 0 and "| layers.0.wq | 64x64 | int8:row:sym:fp32 |" in p.stdout
          and "| layers.2.wq | 64x64 | int4:g128:sym:fp16 |" in p.stdout, f"policy deepseek: {p.stdout[:600]!r}")

    bad_input(["quantize", "--model", MODEL, "--target-bpw", "2.5", "--sensitivity", sens, "--dry-run"], "2.500",
              "budget below the cheapest mix")
    p = run("quantize", "--model", MODEL, "--target-bpw", "2.5", "--sensitivity", sens, "--dry-run")
    check("3.3" in p.stderr, f"the cheapest mix is named: {p.stderr!r}")
    bad_input(["sensitivity", "--model", MODEL, "--calib", TEXT, "--candidates", "w4a16-g128,int9:row"], "int9:row",
              "bad candidate")
    bad_input(["sensitivity", "--model", MODEL, "--calib", TEXT, "--granularity", "block"], "block", "bad granularity")
    bad_input(["sensitivity", "--model", MODEL, "--calib", TEXT, "--act-order"], "--act-order", "act-order without gptq")

    # GPTQ sensitivities with and without act-order: recorded in the JSON, and different figures.
    ao = {}
    for flag in ([], ["--act-order"]):
        out = os.path.join(tmp, f"sens_gptq{len(flag)}.json")
        p = run("sensitivity", "--model", MODEL, "--calib", TEXT, "--candidates", "w3a16-g64", "--granularity", "role",
                "--windows", "2", "--method", "gptq", *flag, "--json", out)
        check(p.returncode == 0, f"gptq sensitivity {flag} failed: {p.stderr}")
        check(("act-order" in p.stdout.splitlines()[0]) == bool(flag), f"header names act-order: {p.stdout[:200]!r}")
        with open(out) as f:
            ao[bool(flag)] = json.load(f)
    check(ao[True]["act_order"] is True and ao[False]["act_order"] is False, "act_order in the JSON")
    # H from quantize's calibration tokens (8192 by default), the scored windows after them; 0: from the scored ones.
    check(ao[False]["gptq_tokens"] == 8192 and ao[False]["gptq_scored_apart"] is True, f"H apart: {ao[False].get('gptq_tokens')}")
    check("after GPTQ's 8192 calibration tokens" in p.stdout.splitlines()[0], f"header names GPTQ's tokens: {p.stdout[:200]!r}")
    same = os.path.join(tmp, "sens_same.json")
    p = run("sensitivity", "--model", MODEL, "--calib", TEXT, "--candidates", "w3a16-g64", "--granularity", "role",
            "--windows", "2", "--method", "gptq", "--calib-tokens", "0", "--json", same)
    check(p.returncode == 0, f"gptq sensitivity --calib-tokens 0 failed: {p.stderr}")
    with open(same) as f:
        sj = json.load(f)
    check(sj["gptq_tokens"] == 2 * 128 and sj["gptq_scored_apart"] is False, f"H from the scored windows: {sj.get('gptq_tokens')}")
    check([u["dkld"] for u in sj["units"]] != [u["dkld"] for u in ao[False]["units"]], "other Hessians, other figures")
    bad_input(["sensitivity", "--model", MODEL, "--calib", TEXT, "--method", "gptq", "--calib-tokens", "100000000"], "--calib-tokens",
              "no window left after GPTQ's tokens")
    bad_input(["sensitivity", "--model", MODEL, "--calib", TEXT, "--method", "gptq", "--calib-tokens", "-1"], "--calib-tokens",
              "negative --calib-tokens")
    bad_input(["quantize", "--model", MODEL, "--target-bpw", "4.5", "--method", "gptq", "--calib", TEXT, "--calib-tokens", "100000000",
               "--candidates", "w3a16-g64,w8a16", "--dry-run"], "--calib-tokens", "quantize: no window left after GPTQ's tokens")
    check([u["dkld"] for u in ao[True]["units"]] != [u["dkld"] for u in ao[False]["units"]], "act-order changes the figures")
    for flag, warned in (([], True), (["--act-order"], False)):
        p = run("quantize", "--model", MODEL, "--target-bpw", "4.5", "--method", "gptq", "--calib", TEXT, "--sensitivity",
                os.path.join(tmp, "sens_gptq1.json"), *flag, "--dry-run")
        check(p.returncode == 0 and ("measured with GPTQ with act-order" in p.stderr) == warned,
              f"act-order mismatch warning {flag}: {p.stderr!r}")
    bad_input(["quantize", "--model", MODEL, "--scheme", "w4a16-g128", "--policy", "llama"], "llama", "bad policy")
    broken = os.path.join(tmp, "broken.json")
    with open(broken, "w") as f:
        json.dump({"granularity": "tensor", "candidates": [{"name": "w8a16", "spec": "int8:row"}],
                   "units": [{"name": "x", "tensors": ["layers.9.wq"], "bits": [1], "dkld": [0], "dppl": [0], "proxy": [0]}]}, f)
    bad_input(["quantize", "--model", MODEL, "--target-bpw", "5", "--sensitivity", broken, "--dry-run"], "layers.9.wq",
              "sensitivity of another model")

finish()

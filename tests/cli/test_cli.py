#!/usr/bin/env python3
"""Behaviour of the `lowbit` command through the built binary: help, version, exit codes,
one-line errors, the global knobs (--threads, LOWBIT_ISA, LOWBIT_THREADS), spot values,
stochastic rounding reproducibility and the JSON shapes.

Usage: test_cli.py PATH/TO/lowbit
Plain Python (no pytest). Every check runs; failures are listed at the end and the exit
status is 1 if any failed.
"""
import json
import os
import re
import subprocess
import sys

if len(sys.argv) != 2:
    sys.exit("usage: test_cli.py PATH/TO/lowbit")
LOWBIT = sys.argv[1]
if not os.access(LOWBIT, os.X_OK):
    sys.exit(f"FAIL: {LOWBIT} is not an executable (build the `lowbit` target)")
SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ISAS = ["scalar", "avx2", "avx512", "avx512vnni"]
failures = []
checks = 0


def clean_env(**extra):
    """The caller's environment without lowbit's knobs, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOWBIT_")}
    env.update(extra)
    return env


def run(*args, env=None):
    p = subprocess.run([LOWBIT, *args], capture_output=True, text=True,
                       env=env if env is not None else clean_env())
    return p.returncode, p.stdout, p.stderr


def cmdline(args, env=None):
    prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items() if k.startswith("LOWBIT_"))
    return (prefix + " " if prefix else "") + "lowbit " + " ".join(args)


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        failures.append(what)
    return cond


def short(s, n=300):
    s = s.strip()
    return s if len(s) <= n else s[:n] + f"... ({len(s)} chars)"


def expect_ok(*args, env=None):
    """Runs a command that must succeed quietly; returns its stdout."""
    rc, out, err = run(*args, env=env)
    check(rc == 0 and err == "",
          f"`{cmdline(args, env)}`: want exit 0 and empty stderr, got exit {rc}, stderr {short(err)!r}")
    return out


def expect_usage_error(*args, env=None, mentions=(), code=2):
    """Bad input: exit `code`, nothing on stdout, exactly one line on stderr, 'lowbit: ' prefix."""
    rc, out, err = run(*args, env=env)
    lines = err.splitlines()
    what = f"`{cmdline(args, env)}`"
    check(rc == code, f"{what}: want exit {code}, got {rc} (stderr {short(err)!r})")
    check(out == "", f"{what}: want empty stdout on error, got {short(out)!r}")
    if check(len(lines) == 1 and err.endswith("\n"),
             f"{what}: want exactly one stderr line, got {len(lines)}: {short(err)!r}"):
        check(lines[0].startswith("lowbit: "), f"{what}: stderr line lacks the 'lowbit: ' prefix: {lines[0]!r}")
        for m in mentions:
            check(m in lines[0], f"{what}: stderr {short(lines[0])!r} does not mention {m!r}")
    return err


def parse_json(text, what):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        check(False, f"{what}: stdout is not JSON ({e}): {short(text)!r}")
        return None


# ------------------------------------------------------------------ help and version

def test_help():
    subs = {(): ["formats", "cpu"], ("formats",): ["encode", "decode"],
            ("formats", "encode"): [], ("formats", "decode"): [], ("cpu",): []}
    for path, mentions in subs.items():
        for flag in ("--help", "-h"):
            out = expect_ok(*path, flag)
            name = " ".join(("lowbit",) + path)
            check("Usage:" in out or "usage:" in out.lower(), f"`{name} {flag}`: no usage line in {short(out)!r}")
            for m in mentions:
                check(re.search(rf"\b{m}\b", out) is not None, f"`{name} {flag}` does not mention {m!r}")


def test_version():
    with open(os.path.join(SOURCE_DIR, "CMakeLists.txt")) as f:
        m = re.search(r"project\(\s*lowbit\s+VERSION\s+([0-9.]+)", f.read())
    want = f"lowbit {m.group(1) if m else '0.1.0'}"
    out = expect_ok("--version")
    check(out.strip() == want, f"`lowbit --version`: want {want!r}, got {out.strip()!r}")


# ------------------------------------------------------------------ usage errors

def format_names():
    table = parse_json(expect_ok("formats", "--json"), "formats --json") or []
    return [e.get("name") for e in table]


def test_usage_errors():
    names = format_names()
    check(len(names) == 18, f"`formats --json`: want 18 formats, got {names}")
    for args in (("formats", "encode", "e4m4", "1"), ("formats", "decode", "e4m4", "0x1"),
                 ("formats", "encode", "E4M3X", "1")):
        expect_usage_error(*args, mentions=[args[2], *names])
    expect_usage_error("formats", "encode", "e4m3", "abc", mentions=["abc"])
    expect_usage_error("formats", "encode", "e4m3", "1", "abc", mentions=["abc"])  # no partial output
    expect_usage_error("formats", "encode", "e4m3", "1.5x")
    expect_usage_error("formats", "encode", "e4m3", "")
    expect_usage_error("formats", "decode", "e4m3", "0x100", mentions=["0x100"])
    expect_usage_error("formats", "decode", "e4m3", "256")
    expect_usage_error("formats", "decode", "e2m1", "0x10")
    expect_usage_error("formats", "decode", "e4m3", "0x7E", "zz", mentions=["zz"])
    expect_usage_error("formats", "decode", "e4m3", "-1")
    expect_usage_error("formats", "encode", "e2m1", "nan", mentions=["e2m1"])
    expect_usage_error("formats", "encode", "e2m1", "--", "1", "-nan")
    expect_usage_error("formats", "encode", "int8", "nan")
    expect_usage_error("formats", "encode", "e4m3", "--saturate", "--no-saturate", "1")
    expect_usage_error("formats", "encode", "e4m3")              # no values
    expect_usage_error("formats", "decode", "e4m3")              # no codes
    expect_usage_error("formats", "encode")                      # no format
    expect_usage_error()                                         # no subcommand
    expect_usage_error("bogus")
    expect_usage_error("formats", "--bogus")
    expect_usage_error("formats", "encode", "e4m3", "--bogus", "1")
    expect_usage_error("formats", "encode", "e4m3", "--stochastic", "--seed", "x", "1")
    expect_usage_error("cpu", "--supports", "bogus", mentions=["bogus"])


# ------------------------------------------------------------------ global knobs

def test_isa_env():
    expect_usage_error("formats", env=clean_env(LOWBIT_ISA="bogus"), mentions=["bogus"])
    expect_usage_error("formats", "encode", "e4m3", "1", env=clean_env(LOWBIT_ISA="bogus"))
    lacking = []
    for isa in ISAS:
        rc, out, err = run("cpu", "--supports", isa)
        check(out == "", f"`lowbit cpu --supports {isa}` printed to stdout: {short(out)!r}")
        if rc == 0:
            env = clean_env(LOWBIT_ISA=isa)
            cpu = parse_json(expect_ok("cpu", "--json", env=env), f"LOWBIT_ISA={isa} cpu --json")
            if cpu is not None:
                check(cpu.get("active_isa") == isa,
                      f"LOWBIT_ISA={isa} lowbit cpu --json: active_isa {cpu.get('active_isa')!r}, want {isa!r}")
                check(isa in cpu.get("supported_isas", []),
                      f"`cpu --supports {isa}` says yes but supported_isas is {cpu.get('supported_isas')}")
            expect_ok("formats", "encode", "e4m3", "0.3", env=env)
        else:
            check(rc == 1, f"`lowbit cpu --supports {isa}`: want exit 0 or 1, got {rc} ({short(err)!r})")
            lacking.append(isa)
    scalar_ok = run("cpu", "--supports", "scalar")[0] == 0
    check(scalar_ok, "`lowbit cpu --supports scalar` must succeed on any CPU")
    if not lacking:
        print("NOTE: this CPU supports every ISA level; skipping 'LOWBIT_ISA=<unsupported>' checks")
    for isa in lacking:
        expect_usage_error("formats", env=clean_env(LOWBIT_ISA=isa), mentions=[isa])


def test_threads():
    for bad in ("0", "-1", "abc"):
        expect_usage_error("formats", env=clean_env(LOWBIT_THREADS=bad), mentions=["LOWBIT_THREADS"])
    expect_usage_error("--threads", "0", "formats", mentions=["--threads"])
    expect_usage_error("--threads", "abc", "formats", mentions=["--threads"])
    cpu = parse_json(expect_ok("cpu", "--json", env=clean_env(LOWBIT_THREADS="2")), "LOWBIT_THREADS=2 cpu --json")
    if cpu is not None:
        check(cpu.get("threads") == 2, f"LOWBIT_THREADS=2 lowbit cpu --json: threads {cpu.get('threads')!r}")
    cpu = parse_json(expect_ok("--threads", "3", "cpu", "--json"), "--threads 3 cpu --json")
    if cpu is not None:
        check(cpu.get("threads") == 3, f"lowbit --threads 3 cpu --json: threads {cpu.get('threads')!r}")
    cpu = parse_json(expect_ok("--threads", "3", "cpu", "--json", env=clean_env(LOWBIT_THREADS="2")),
                     "LOWBIT_THREADS=2 --threads 3 cpu --json")
    if cpu is not None:
        check(cpu.get("threads") == 3,
              f"LOWBIT_THREADS=2 lowbit --threads 3 cpu --json: the flag must win, threads {cpu.get('threads')!r}")


# ------------------------------------------------------------------ spot values

def expect_lines(args, want):
    out = expect_ok(*args)
    got = out.splitlines()
    check(got == want, f"`lowbit {' '.join(args)}`: want {want}, got {got}")


def test_spot_values():
    expect_lines(["formats", "encode", "e4m3", "464", "470"], ["464 0x7E 448", "470 0x7F nan"])
    expect_lines(["formats", "encode", "e4m3", "--saturate", "470"], ["470 0x7E 448"])
    expect_lines(["formats", "encode", "e4m3", "0.3"], ["0.300000012 0x2A 0.3125"])
    expect_lines(["formats", "encode", "e5m2", "61440"], ["61440 0x7C inf"])
    expect_lines(["formats", "encode", "e5m2", "61439.996"], ["61439.9961 0x7B 57344"])
    expect_lines(["formats", "encode", "e5m2", "--saturate", "inf"], ["inf 0x7B 57344"])
    expect_lines(["formats", "decode", "e8m0", "0x7F", "0xFF"], ["0x7F 1", "0xFF nan"])
    expect_lines(["formats", "decode", "e5m2", "0x7B", "0x7C", "0x7E"], ["0x7B 57344", "0x7C inf", "0x7E nan"])
    expect_lines(["formats", "decode", "fp16", "0x7C00", "64512", "0x3C00"], ["0x7C00 inf", "0xFC00 -inf", "0x3C00 1"])
    expect_lines(["formats", "decode", "e2m1", "0xF", "1"], ["0xF -6", "0x1 0.5"])
    expect_lines(["formats", "decode", "fp32", "0x3F800000"], ["0x3F800000 1"])
    expect_lines(["formats", "encode", "e4m3", "0x1p-9", "1e-3"], ["0.001953125 0x01 0.001953125",
                                                                  "0.00100000005 0x01 0.001953125"])


def test_negative_values():
    """Negative values. README/help say to put `--` before them; check what is required."""
    expect_lines(["formats", "encode", "e4m3", "--", "-1.5", "-inf", "-0"],
                 ["-1.5 0xBC -1.5", "-inf 0xFF nan", "-0 0x80 -0"])
    expect_lines(["formats", "encode", "e4m3", "--saturate", "--", "-1e6"], ["-1000000 0xFE -448"])
    # A plain negative number needs no `--` (CLI11 recognises numbers).
    expect_lines(["formats", "encode", "e4m3", "-1.5"], ["-1.5 0xBC -1.5"])
    # `--` placed after the first value must still work: the help says "put -- before negatives".
    expect_lines(["formats", "encode", "e4m3", "1", "--", "-2"], ["1 0x38 1", "-2 0xC0 -2"])
    # Non-numeric negatives (-inf, -nan) without `--`: either right, or a one-line usage error
    # when the help tells the user to use `--`; never a silently wrong result.
    help_text = run("formats", "encode", "--help")[1]
    rc, out, err = run("formats", "encode", "e4m3", "1", "-inf")
    if rc == 0:
        check(out.splitlines() == ["1 0x38 1", "-inf 0xFF nan"],
              f"`lowbit formats encode e4m3 1 -inf`: got {out.splitlines()}")
    else:
        check("--" in help_text and "negative" in help_text,
              "`lowbit formats encode e4m3 1 -inf` fails but `formats encode --help` does not say to use `--`")
        expect_usage_error("formats", "encode", "e4m3", "1", "-inf")


# ------------------------------------------------------------------ stochastic rounding

def codes_of(out):
    return [line.split()[1] for line in out.splitlines()]


def test_stochastic():
    vals = ["0.3"] * 200
    a = expect_ok("formats", "encode", "e4m3", "--stochastic", "--seed", "42", *vals)
    b = expect_ok("formats", "encode", "e4m3", "--stochastic", "--seed", "42", *vals)
    check(a == b and a != "", "`formats encode e4m3 --stochastic --seed 42 0.3 x200` differs between two runs")
    c = expect_ok("formats", "encode", "e4m3", "--stochastic", "--seed", "43", *vals)
    check(codes_of(a) != codes_of(c), "--stochastic with --seed 42 and --seed 43 gave the same 200 codes")
    codes = codes_of(a)
    check(len(codes) == 200, f"--stochastic: want 200 lines, got {len(codes)}")
    # 0.3 lies between 0.28125 (0x29) and 0.3125 (0x2A): up with probability 0.6.
    check(set(codes) <= {"0x29", "0x2A"}, f"--stochastic 0.3: codes beyond the two neighbours: {sorted(set(codes))}")
    up = codes.count("0x2A") / max(1, len(codes))
    check(0.4 <= up <= 0.8, f"--stochastic 0.3: rounded up {up:.2f} of the time, want about 0.6")
    # The thread count must not change the stream (bits depend on (seed, index) only).
    d = expect_ok("--threads", "1", "formats", "encode", "e4m3", "--stochastic", "--seed", "42", *vals)
    check(d == a, "--stochastic --seed 42: output differs with --threads 1")
    # Exactly representable values never move.
    e = expect_ok("formats", "encode", "e4m3", "--stochastic", "--seed", "7", *(["0.3125"] * 50))
    check(set(codes_of(e)) == {"0x2A"}, f"--stochastic moved an exact value 0.3125: {sorted(set(codes_of(e)))}")
    # Without --stochastic the seed is irrelevant.
    f = expect_ok("formats", "encode", "e4m3", "--seed", "5", *vals[:20])
    check(set(codes_of(f)) == {"0x2A"}, f"round-to-nearest with --seed: {sorted(set(codes_of(f)))}")
    g = parse_json(expect_ok("formats", "encode", "e4m3", "--stochastic", "--seed", "42", "--json", *vals),
                   "encode --stochastic --json")
    if g is not None:
        check([e.get("code") for e in g] == codes, "--stochastic --seed 42: --json codes differ from text codes")


# ------------------------------------------------------------------ JSON shapes and the table

def test_json_and_table():
    table = parse_json(expect_ok("formats", "--json"), "formats --json")
    documented = {"name", "bits", "max", "min_normal", "min_subnormal", "has_inf"}
    if table is not None and check(isinstance(table, list) and len(table) == 18,
                                   f"formats --json: want a list of 18, got {short(json.dumps(table))}"):
        for e in table:
            missing = documented - set(e)
            check(not missing, f"formats --json entry {e.get('name')!r} lacks {sorted(missing)}")
            check(isinstance(e.get("bits"), int) and isinstance(e.get("has_inf"), bool),
                  f"formats --json entry {e.get('name')!r}: bits/has_inf have the wrong JSON type: {e}")
        byname = {e.get("name"): e for e in table}
        if "int3" in byname:
            check(byname["int3"].get("bits") == 3 and byname["int3"].get("max") == 3, f"formats --json int3: {byname['int3']}")
        if "uint6" in byname:
            check(byname["uint6"].get("bits") == 6 and byname["uint6"].get("max") == 63, f"formats --json uint6: {byname['uint6']}")
        if "e4m3" in byname:
            check(byname["e4m3"].get("max") == 448 and byname["e4m3"].get("has_inf") is False,
                  f"formats --json e4m3: {byname['e4m3']}")
    out = expect_ok("formats")
    lines = [l for l in out.splitlines() if l.strip()]
    check(len(lines) == 19, f"`lowbit formats`: want a header and 18 data rows, got {len(lines)} lines")
    if table is not None and len(lines) == 19:
        check([l.split()[0] for l in lines[1:]] == [e.get("name") for e in table],
              "`lowbit formats` rows and `formats --json` names differ")

    enc = parse_json(expect_ok("formats", "encode", "e5m2", "--json", "--", "1.5", "61440", "nan", "-inf"),
                     "formats encode --json")
    if enc is not None and check(isinstance(enc, list) and len(enc) == 4, f"encode --json: {short(json.dumps(enc))}"):
        for e in enc:
            check(set(e) == {"input", "code", "value"}, f"encode --json entry keys {sorted(e)}")
        check(enc[0] == {"input": 1.5, "code": "0x3E", "value": 1.5}, f"encode --json 1.5: {enc[0]}")
        check(enc[1] == {"input": 61440, "code": "0x7C", "value": "inf"}, f"encode --json 61440: {enc[1]}")
        check(enc[2].get("input") == "nan" and enc[2].get("value") == "nan", f"encode --json nan: {enc[2]}")
        check(enc[3] == {"input": "-inf", "code": "0xFC", "value": "-inf"}, f"encode --json -inf: {enc[3]}")
    dec = parse_json(expect_ok("formats", "decode", "e5m2", "--json", "0xFC", "123", "0x7E"), "formats decode --json")
    if dec is not None and check(isinstance(dec, list) and len(dec) == 3, f"decode --json: {short(json.dumps(dec))}"):
        for e in dec:
            check(set(e) == {"code", "value"}, f"decode --json entry keys {sorted(e)}")
        check(dec == [{"code": "0xFC", "value": "-inf"}, {"code": "0x7B", "value": 57344},
                      {"code": "0x7E", "value": "nan"}], f"decode --json e5m2: {dec}")
    cpu = parse_json(expect_ok("cpu", "--json"), "cpu --json")
    if cpu is not None:
        keys = {"brand", "features", "supported_isas", "best_isa", "active_isa", "threads"}
        check(keys <= set(cpu), f"cpu --json lacks {sorted(keys - set(cpu))}")
        isas = cpu.get("supported_isas", [])
        check("scalar" in isas and set(isas) <= set(ISAS), f"cpu --json supported_isas: {isas}")
        check(cpu.get("best_isa") in isas and cpu.get("active_isa") == cpu.get("best_isa"),
              f"cpu --json: best {cpu.get('best_isa')!r}, active {cpu.get('active_isa')!r}, supported {isas}")
        check(isinstance(cpu.get("threads"), int) and cpu["threads"] >= 1, f"cpu --json threads {cpu.get('threads')!r}")
        check(isinstance(cpu.get("features"), dict) and all(isinstance(v, bool) for v in cpu["features"].values()),
              f"cpu --json features: {cpu.get('features')}")
    out = expect_ok("cpu")
    check(len(out.splitlines()) >= 3, f"`lowbit cpu`: {short(out)!r}")


def main():
    tests = [test_help, test_version, test_usage_errors, test_isa_env, test_threads, test_spot_values,
             test_negative_values, test_stochastic, test_json_and_table]
    for t in tests:
        before = len(failures)
        try:
            t()
        except Exception as e:  # keep going: report everything
            failures.append(f"{t.__name__}: {type(e).__name__}: {e}")
        print(f"{t.__name__}: {'ok' if len(failures) == before else f'{len(failures) - before} failed'}")
    if failures:
        print(f"\nFAIL: {len(failures)} of {checks} checks", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"OK: {checks} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())

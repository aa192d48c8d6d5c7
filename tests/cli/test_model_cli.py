"""lowbit generate / eval from the command line: outputs and bad input.

Usage: test_model_cli.py LOWBIT_BINARY. Bad input must give exit 2, exactly one stderr line
starting "lowbit: " that names the file, and no stdout; no output file is left behind.
"""
import json
import os
import subprocess
import sys
import tempfile

from clitest import LOWBIT, SHARED, bad_input, check, failures, finish, run  # noqa: F401
MODEL = os.path.join(SHARED, "models", "stories260K.bin")
TEXT = os.path.join(SHARED, "data", "tinystories_val.txt")








if not os.path.exists(MODEL):
    print(f"SKIP: {MODEL} not found (../shared is missing)")
    sys.exit(77)

# generate: greedy ids are the pinned run.c continuation (tests/model/llama_test.cc has all 64).
p = run("generate", "--model", MODEL, "--prompt", "Once upon a time", "-n", "8", "--ids")
check(p.returncode == 0, f"generate --ids failed: {p.stderr}")
check(p.stdout.split() == "432 383 286 261 376 298 315 421".split(), f"generate --ids: {p.stdout!r}")
# --ggml-acts only concerns GGUF k-quant linears: an fp32 model gives the same ids either way.
for acts in ("f32", "q8_K"):
    q = run("generate", "--model", MODEL, "--prompt", "Once upon a time", "-n", "8", "--ids", "--ggml-acts", acts)
    check(q.returncode == 0 and q.stdout == p.stdout, f"generate --ggml-acts {acts}: {q.stdout!r} {q.stderr!r}")
p = run("generate", "--model", MODEL, "--prompt", "Once upon a time", "-n", "20")
check(p.returncode == 0 and p.stdout.startswith("Once upon a time, there was a little girl"), f"generate text: {p.stdout!r}")
p = run("generate", "--model", MODEL, "--prompt", "Once upon a time", "-n", "20", "--temp", "0.8", "--seed", "5", "--ids")
q = run("generate", "--model", MODEL, "--prompt", "Once upon a time", "-n", "20", "--temp", "0.8", "--seed", "5", "--ids")
check(p.returncode == 0 and p.stdout == q.stdout, "sampling with the same seed is not reproducible")

with tempfile.TemporaryDirectory() as tmp:
    out_json = os.path.join(tmp, "e.json")
    out_svg = os.path.join(tmp, "e.svg")
    p = run("eval", "--model", MODEL, "--scheme", "w8a8", "--text", TEXT, "--split", "eval", "--max-windows", "4",
            "--json", out_json, "--plot", out_svg)
    check(p.returncode == 0, f"eval failed: {p.stderr}")
    check(p.stdout.count("\n") == 5 and "| w8a8 |" in p.stdout, f"eval table: {p.stdout!r}")
    check("fp32 reference in the same run: prefill" in p.stdout, f"eval speed line: {p.stdout!r}")
    d = json.load(open(out_json))
    for key in ["ppl", "ref_ppl", "kld_mean", "kld_p99", "top1", "bpw", "size_bytes", "prefill_tok_s", "decode_tok_s", "ref_prefill_tok_s", "ref_decode_tok_s", "decode_speedup",
                "tokens_scored"]:
        check(key in d, f"eval JSON lacks {key}")
    check(d["tokens_scored"] == 4 * 64, f"tokens_scored {d['tokens_scored']}")
    check(0 < d["kld_mean"] < 0.1 and d["top1"] > 0.8, f"w8a8 figures implausible: {d}")
    check(d["ref_decode_tok_s"] > 0 and d["ref_prefill_tok_s"] > 0, f"reference speed missing: {d}")
    check(abs(d["decode_speedup"] - d["decode_tok_s"] / d["ref_decode_tok_s"]) < 1e-9, "decode_speedup is not the ratio")
    check(len(d["inputs"]["model_sha256"]) == 64, "model hash missing")
    check(open(out_svg).read().startswith("<svg"), "plot is not an SVG")

    # Several schemes share one reference pass: a row each, JSON an array, figures as in a run alone.
    out_many = os.path.join(tmp, "many.json")
    p = run("eval", "--model", MODEL, "--scheme", "w4a16-g32,w8a8", "--scheme", "w3a16-g64", "--text", TEXT,
            "--split", "eval", "--max-windows", "4", "--json", out_many)
    check(p.returncode == 0, f"eval of three schemes failed: {p.stderr}")
    check(p.stdout.count("\n") == 7 and "| w4a16-g32 |" in p.stdout and "| w3a16-g64 |" in p.stdout,
          f"eval table of three: {p.stdout!r}")
    many = json.load(open(out_many))
    check(isinstance(many, list) and [m["model"] for m in many] == ["w4a16-g32", "w8a8", "w3a16-g64"],
          f"eval JSON of three: {[m.get('model') for m in many] if isinstance(many, list) else many}")
    if isinstance(many, list) and len(many) == 3:
        check(many[1]["kld_mean"] == d["kld_mean"] and many[1]["ppl"] == d["ppl"],
              "w8a8 alone and w8a8 among three schemes disagree")
        check(many[0]["ref_ppl"] == many[2]["ref_ppl"] == d["ref_ppl"], "one reference, different ref_ppl")
        check(many[2]["kld_mean"] > many[0]["kld_mean"] > many[1]["kld_mean"], f"3-bit should cost more than 4 than 8: {many}")
        check(abs(many[2]["bpw"] - (3 + 16 / 64 + 3 / 64)) < 0.1, f"w3a16-g64 bpw {many[2]['bpw']}")

    # Bad input, each named.
    def write(name, data):
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    blob = open(MODEL, "rb").read()
    truncated = write("truncated.bin", blob[: len(blob) // 2])
    wrong_magic = write("magic.bin", b"ak43" + blob[4:])
    bad_dims = write("dims.bin", (999).to_bytes(4, "little") + blob[4:])
    empty_text = write("empty.txt", b"")
    not_utf8 = write("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"))
    gguf = write("model.gguf", b"GGUF" + bytes(60))
    for path, what in [(truncated, "truncated checkpoint"), (wrong_magic, "wrong magic"), (bad_dims, "dims vs size"),
                       (gguf, "gguf")]:
        bad_input(["generate", "--model", path, "--prompt", "x", "--tokenizer", os.path.join(SHARED, "models", "tok512.model")],
                  os.path.basename(path), what)
    bad_input(["generate", "--model", MODEL, "--prompt", "x", "--tokenizer", os.path.join(SHARED, "models", "tokenizer.model")],
              "tokenizer.model", "tokenizer vocab differs from the model's")
    out2 = os.path.join(tmp, "never.json")
    bad_input(["eval", "--model", MODEL, "--text", empty_text, "--json", out2], "empty.txt", "empty text")
    bad_input(["eval", "--model", MODEL, "--text", not_utf8, "--json", out2], "latin1.txt", "not UTF-8")
    bad_input(["eval", "--model", MODEL, "--text", TEXT, "--scheme", "w3a3"], "w3a3", "unknown scheme")
    bad_input(["generate", "--model", MODEL, "--prompt", "x", "--ggml-acts", "q4"], "--ggml-acts", "unknown --ggml-acts")
    bad_input(["eval", "--model", MODEL, "--text", TEXT, "--ggml-acts", ""], "--ggml-acts", "empty --ggml-acts")
    bad_input(["eval", "--model", MODEL, "--text", TEXT, "--scheme", "w8a8,w3a3"], "w3a3", "unknown scheme in a list")
    bad_input(["eval", "--model", MODEL, "--text", TEXT, "--scheme", "w8a8,w8a16", "--plot", out_svg + "2"], "--plot",
              "plot of two models")
    bad_input(["eval", "--model", MODEL, "--text", TEXT, "--weights", "int4:g0"], "group", "bad spec")
    check(not os.path.exists(out2), "a failed eval left its JSON behind")
    check(sorted(os.listdir(tmp)) == sorted(["e.json", "e.svg", "many.json", "truncated.bin", "magic.bin", "dims.bin", "empty.txt",
                                             "latin1.txt", "model.gguf"]), f"stray files: {os.listdir(tmp)}")

if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print("all model CLI checks passed")

"""Hostile input and hostile conditions (issue 21), checked from outside on the bundled model.

Usage: test_hostile_cli.py LOWBIT_BINARY. Exits 77 (skip) when ../shared is missing.
- Outputs: -o / --json / --plot never replace a device node, a FIFO or a symlink, nor an input
  (--model, --calib, --tokenizer, --text); kill -9 at many moments leaves the old output or the
  new one, never a mix, and the next run removes what the killed ones left; a full disk
  (RLIMIT_FSIZE) leaves the previous output and no temp files.
- Special inputs: a device, a FIFO or a folder as --text / --calib / --plan / --tokenizer is a
  one-line error with exit 2, at once (never blocks, never allocates without bound).
Device nodes are made with mknod in a temp folder (when running as root); the real /dev is
never written.
"""
import json
import os
import shutil
import resource
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time

import clitest
from clitest import LOWBIT, ROOT, check, failures, finish, run

# The hostile-input table in docs/results.md (issue 21): every case below is counted under its
# category; `LOWBIT_HOSTILE_TABLE=1 test_hostile_cli.py LOWBIT` prints the table at the end.
TABLE = {}
category = ["outputs"]


def bad_input(*args, **kwargs):
    before = len(failures)
    clitest.bad_input(*args, **kwargs)
    tally(len(failures) == before)


def tally(ok, n=1):
    row = TABLE.setdefault(category[0], [0, 0])
    row[0] += n
    row[1] += n if ok else 0

MODELS = os.path.join(ROOT, "..", "shared", "models")
MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.model")
TEXT = os.path.join(ROOT, "..", "shared", "data", "tinystories_val.txt")
if not os.path.exists(MODEL):
    print(f"SKIP: {MODEL} not found (../shared is missing)")
    sys.exit(77)


def snapshot(path):
    """What a reader sees at `path`: None, the bytes of a file, or {name: bytes} of a folder."""
    if os.path.isdir(path):
        out = {}
        for name in sorted(os.listdir(path)):
            with open(os.path.join(path, name), "rb") as f:
                out[name] = f.read()
        return out
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    return None


def temps(folder):
    return sorted(n for n in os.listdir(folder) if ".tmp." in n)


def patch_gguf(data, block_count=None, nan_score=False, alias_tensors=False):
    """A copy of GGUF v3 bytes with one field forged (a minimal parser of the header)."""
    b = bytearray(data)
    pos = 8
    n_tensors, n_kv = struct.unpack_from("<QQ", b, pos)
    pos += 16
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_value(t, pos):
        if t == 8:
            return pos + 8 + struct.unpack_from("<Q", b, pos)[0]
        if t == 9:
            et, n = struct.unpack_from("<IQ", b, pos)
            pos += 12
            if et == 8:
                for _ in range(n):
                    pos = skip_value(8, pos)
                return pos
            return pos + n * sizes[et]
        return pos + sizes[t]
    for _ in range(n_kv):
        kl, = struct.unpack_from("<Q", b, pos)
        key = bytes(b[pos + 8:pos + 8 + kl]).decode()
        pos += 8 + kl
        t, = struct.unpack_from("<I", b, pos)
        pos += 4
        if key == "llama.block_count" and block_count is not None:
            struct.pack_into("<I", b, pos, block_count)
        if key == "tokenizer.ggml.scores" and nan_score:
            struct.pack_into("<f", b, pos + 12 + 4 * 5, float("nan"))
        pos = skip_value(t, pos)
    offsets = []
    for _ in range(n_tensors):
        nl, = struct.unpack_from("<Q", b, pos)
        pos += 8 + nl
        nd, = struct.unpack_from("<I", b, pos)
        pos += 4 + 8 * nd + 4
        offsets.append(pos)
        pos += 8
    if alias_tensors:
        struct.pack_into("<Q", b, offsets[1], struct.unpack_from("<Q", b, offsets[0])[0])
    return bytes(b)


with tempfile.TemporaryDirectory() as tmp:
    out = lambda name: os.path.join(tmp, name)  # noqa: E731

    # ---- outputs that must not be replaced ----
    specials = {}
    os.mkfifo(out("fifo"))
    specials["fifo"] = out("fifo")
    if os.geteuid() == 0:
        os.mknod(out("null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null twin, here
        specials["device"] = out("null")
    else:
        print("note: not root, no device node made (mknod needs CAP_MKNOD); FIFO and symlink still checked")
    with open(out("victim.txt"), "w") as f:
        f.write("keep me")
    os.symlink(out("victim.txt"), out("link"))
    specials["symlink"] = out("link")
    for kind, node in specials.items():
        mode_before = os.lstat(node).st_mode
        for args, flag in [(["convert", "--model", MODEL, "--format", "gguf", "-o", node], "-o"),
                           (["convert", "--model", MODEL, "-o", node], "-o"),
                           (["quantize", "--model", MODEL, "--scheme", "w8a8", "--dry-run", "--json", node], "--json"),
                           (["eval", "--model", MODEL, "--text", TEXT, "--max-windows", "1", "--json", node], "--json"),
                           (["eval", "--model", MODEL, "--text", TEXT, "--max-windows", "1", "--plot", node], "--plot"),
                           (["quantize", "--model", MODEL, "--scheme", "w8a8", "--dry-run", "--plan-out", node], "--plan-out"),
                           (["sensitivity", "--model", MODEL, "--calib", TEXT, "--json", node], "--json"),
                           (["sensitivity", "--model", MODEL, "--calib", TEXT, "--plot", node], "--plot"),
                           (["train", "--model", MODEL, "--data", TEXT, "--steps", "1", "-o", node], "-o"),
                           (["train", "--model", MODEL, "--data", TEXT, "--steps", "1", "--log", node], "--log"),
                           (["train", "--model", MODEL, "--data", TEXT, "--steps", "1", "--json", node], "--json"),
                           (["train", "--model", MODEL, "--data", TEXT, "--steps", "1", "--plot", node], "--plot")]:
            bad_input(args, node, f"{flag} {kind} ({args[0]} {' '.join(args[3:5])})", empty_stdout=False)
            check(os.lstat(node).st_mode == mode_before, f"{flag} {kind}: the node was replaced")
    check(open(out("victim.txt")).read() == "keep me", "a symlink's target was written")
    check(temps(tmp) == [], f"temp files left: {temps(tmp)}")

    category[0] = "outputs"
    # ---- an output equal to an input ----
    shutil.copy(MODEL, out("m.bin"))
    shutil.copy(TEXT, out("t.txt"))
    shutil.copy(TOK, out("tok.model"))
    before = {p: snapshot(out(p)) for p in ("m.bin", "t.txt", "tok.model")}
    bad_input(["convert", "--model", out("m.bin"), "--format", "gguf", "-o", out("m.bin")], "--model", "-o = --model")
    bad_input(["convert", "--model", out("m.bin"), "--tokenizer", out("tok.model"), "--format", "gguf", "-o",
               out("tok.model")], "--tokenizer", "-o = --tokenizer")
    bad_input(["quantize", "--model", out("m.bin"), "--scheme", "w8a8", "--method", "gptq", "--calib", out("t.txt"),
               "--format", "gguf", "-o", out("t.txt")], "--calib", "-o = --calib")
    bad_input(["quantize", "--model", out("m.bin"), "--scheme", "w8a8", "--dry-run", "--json", out("m.bin")],
              "--model", "quantize --json = --model")
    bad_input(["eval", "--model", out("m.bin"), "--text", out("t.txt"), "--json", out("t.txt")], "--text",
              "eval --json = --text")
    bad_input(["eval", "--model", out("m.bin"), "--text", out("t.txt"), "--plot", out("tok.model"), "--tokenizer",
               out("tok.model")], "--tokenizer", "eval --plot = --tokenizer")
    os.symlink(out("t.txt"), out("t_alias.txt"))  # the same file under another name
    bad_input(["eval", "--model", out("m.bin"), "--text", out("t_alias.txt"), "--json", out("t.txt")], "--text",
              "eval --json = --text through a symlink")
    bad_input(["sensitivity", "--model", out("m.bin"), "--calib", out("t.txt"), "--json", out("t.txt")], "--calib",
              "sensitivity --json = --calib")
    bad_input(["sensitivity", "--model", out("m.bin"), "--calib", out("t.txt"), "--plot", out("m.bin")], "--model",
              "sensitivity --plot = --model")
    bad_input(["quantize", "--model", out("m.bin"), "--scheme", "w8a8", "--dry-run", "--plan-out", out("m.bin")], "--model",
              "quantize --plan-out = --model")
    bad_input(["train", "--model", out("m.bin"), "--data", out("t.txt"), "--tokenizer", out("tok.model"), "--steps", "1",
               "--log", out("t.txt")], "--data",
              "train --log = --data")
    bad_input(["train", "--model", out("m.bin"), "--data", out("t.txt"), "--tokenizer", out("tok.model"), "--steps", "1",
               "--json", out("m.bin")], "--model",
              "train --json = --model")
    bad_input(["train", "--model", out("m.bin"), "--data", out("t.txt"), "--tokenizer", out("tok.model"), "--steps", "1",
               "--plot", out("tok.model")], "--tokenizer", "train --plot = --tokenizer")
    p = run("convert", "--model", out("m.bin"), "--tokenizer", TOK, "-o", out("folder"))
    check(p.returncode == 0, f"convert to a folder: {p.stderr.strip()!r}")
    bad_input(["convert", "--model", out("folder"), "-o", out("folder")], "--model", "-o folder = --model folder")
    bad_input(["eval", "--model", out("folder"), "--text", out("t.txt"), "--json",
               os.path.join(out("folder"), "model.safetensors")], "--model", "--json = the model's weights file")
    bad_input(["train", "--model", out("folder"), "--data", out("t.txt"), "--steps", "1", "-o", out("folder")], "--model",
              "train -o = --model folder")
    for p_, b in before.items():
        check(snapshot(out(p_)) == b, f"input {p_} changed")

    category[0] = "kill -9 / SIGTERM during a write"
    # ---- kill -9 / SIGTERM at many moments: old output or new, never a mix ----
    for fmt_args, target in [(["--format", "gguf"], out("k.gguf")), ([], out("kdir"))]:
        r = run("convert", "--model", MODEL, *fmt_args, "-o", target)
        check(r.returncode == 0, f"convert {target}: {r.stderr.strip()!r}")
        old = snapshot(target)
        r = run("convert", "--model", MODEL, "--scheme", "w4a16-g32", *fmt_args, "-o", target)
        new = snapshot(target)
        check(r.returncode == 0 and new != old, f"convert --scheme {target}: {r.stderr.strip()!r}")
        t0 = time.time()
        r = run("convert", "--model", MODEL, *fmt_args, "-o", target)
        full = time.time() - t0  # kills are spread over 0 .. 2 x a whole run, however loaded the machine is
        check(snapshot(target) == old, "reconvert gives the same bytes")
        seen = {"old": 0, "new": 0}
        env = dict(os.environ, LOWBIT_NO_PROGRESS="1")
        outputs = {"fp32": old, "w4a16-g32": new}
        current = "fp32"
        for i in range(48):
            intended = "w4a16-g32" if current == "fp32" else "fp32"  # always write the other one
            scheme = ["--scheme", intended] if intended != "fp32" else []
            proc = subprocess.Popen([LOWBIT, "convert", "--model", MODEL, *scheme, *fmt_args, "-o", target],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            time.sleep(2.0 * full * (i // 2) / 24)  # from before the first write to well after the rename
            proc.send_signal(signal.SIGKILL if i % 3 else signal.SIGTERM)
            proc.wait()
            got = snapshot(target)
            if got == outputs[current]:
                seen["old"] += 1
            elif got == outputs[intended]:
                seen["new"] += 1
                current = intended
            else:
                check(False, f"kill {i} ({target}): output is neither the old nor the new one")
            tally(got in (outputs[current], outputs[intended]))
        check(seen["old"] > 0 and seen["new"] > 0, f"kills at every moment saw both outcomes: {seen}")
        r = run("convert", "--model", MODEL, *fmt_args, "-o", target)
        check(r.returncode == 0, f"convert after kills: {r.stderr.strip()!r}")
        check(temps(tmp) == [], f"temp files left after kills and one more run: {temps(tmp)}")

    category[0] = "full disk"
    # ---- a full disk (file size limit) leaves the previous output and no temp files ----
    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write(2) then fails with EFBIG
    for fmt_args, target in [(["--format", "gguf"], out("k.gguf")), ([], out("kdir"))]:
        prev = snapshot(target)
        p = subprocess.run([LOWBIT, "convert", "--model", MODEL, "--scheme", "w4a16-g32", *fmt_args, "-o", target],
                           capture_output=True, text=True, preexec_fn=small_disk,
                           env=dict(os.environ, LOWBIT_NO_PROGRESS="1"))
        lines = p.stderr.strip().splitlines()
        check(p.returncode == 1 and len(lines) == 1 and "too large" in p.stderr.lower(),
              f"full disk {target}: exit {p.returncode}, {p.stderr.strip()!r}")
        check(snapshot(target) == prev, f"full disk {target}: previous output changed")
        check(temps(tmp) == [], f"full disk {target}: temp files left: {temps(tmp)}")
        tally(p.returncode == 1 and snapshot(target) == prev and temps(tmp) == [])

    category[0] = "stale temps"
    # ---- a stale temp of a live process is kept, of a dead one removed ----
    sleeper = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    live_tmp = out(f"s.gguf.tmp.{sleeper.pid}-AAAAAA")
    dead_tmp = out(f"s.gguf.tmp.{dead.pid}-BBBBBB")
    dead_dir = out(f"sdir.tmp.{dead.pid}-CCCCCC")
    for t in (live_tmp, dead_tmp):
        open(t, "w").close()
    os.mkdir(dead_dir)
    open(os.path.join(dead_dir, "model.safetensors"), "w").close()
    run("convert", "--model", MODEL, "--format", "gguf", "-o", out("s.gguf"))
    run("convert", "--model", MODEL, "-o", out("sdir"))
    check(os.path.exists(live_tmp), "a live process's temp file was removed")
    check(not os.path.exists(dead_tmp) and not os.path.exists(dead_dir), "a dead process's temps were kept")
    tally(os.path.exists(live_tmp) and not os.path.exists(dead_tmp) and not os.path.exists(dead_dir))
    sleeper.kill()
    sleeper.wait()
    os.unlink(live_tmp)

    category[0] = "special files as inputs"
    # ---- special files and folders as inputs: exit 2 at once ----
    nodes = dict(specials)
    nodes.pop("symlink")
    nodes["folder"] = tmp
    for kind, node in nodes.items():
        for args, what in [(["eval", "--model", MODEL, "--text", node], "--text"),
                           (["eval", "--model", MODEL, "--text", TEXT, "--tokenizer", node], "--tokenizer"),
                           (["quantize", "--model", MODEL, "--scheme", "w8a8", "--method", "gptq", "--calib", node,
                             "--dry-run"], "--calib"),
                           (["quantize", "--model", MODEL, "--scheme", "w8a8", "--method", "gptq", "--calib", node,
                             "-o", out("never")], "--calib"),
                           (["quantize", "--model", MODEL, "--scheme", "w8a8", "--plan", node, "--dry-run"], "--plan"),
                           (["generate", "--model", MODEL, "--tokenizer", node, "--prompt", "Once", "-n", "2"], "generate --tokenizer")]:
            if what == "--calib" and "--dry-run" in args:
                continue  # --dry-run reads no text
            t0 = time.time()
            bad_input(args, node, f"{what} {kind}", out=out("never"))
            check(time.time() - t0 < 20, f"{what} {kind}: took {time.time() - t0:.1f} s")

    category[0] = "NaN / Inf / huge values in weights, scales, zero points"
    # ---- NaN / Inf / huge numbers: named and refused, never a silent NaN perplexity ----
    import numpy as np
    from safetensors.numpy import load_file, save_file
    raw = open(MODEL, "rb").read()
    for value, what in [(float("nan"), "nan"), (float("inf"), "inf"), (3.4028235e38, "3.4e+38"), (1e30, "1e+30")]:
        b = bytearray(raw)
        struct.pack_into("<f", b, 28 + 4 * 1000, value)  # inside token_embd (header is 7 int32)
        open(out("bad.bin"), "wb").write(b)
        bad_input(["eval", "--model", out("bad.bin"), "--tokenizer", TOK, "--text", TEXT, "--max-windows", "1"],
                  "index 1000", f"llama2.c weight {what}")
        bad_input(["quantize", "--model", out("bad.bin"), "--tokenizer", TOK, "--scheme", "w4a16-g32", "--method",
                   "gptq", "--calib", TEXT, "-o", out("never")], "index 1000", f"gptq on a weight {what}", out=out("never"))
    b = bytearray(raw)
    struct.pack_into("<f", b, 28 + 4 * 1000, 1e5)  # finite, within the load bound, beyond fp16
    open(out("big_embd.bin"), "wb").write(b)
    bad_input(["quantize", "--model", out("big_embd.bin"), "--tokenizer", TOK, "--scheme", "w8a8", "-o", out("never")],
              "tok_embeddings", "an embedding beyond fp16 is not clamped silently", out=out("never"))
    for spec, key_end, value, must in [("int4:g32:sym:fp16", ".scales", np.float16(np.nan), "is nan"),
                                       ("int4:g32:asym:fp16", ".zeros", np.int32(1 << 30), "outside int4's range"),
                                       ("int4:g32:asym:fp16", ".zeros", np.int32(-9), "outside int4's range")]:
        qdir = out("q_" + spec.replace(":", "_"))
        if not os.path.isdir(qdir):
            r = run("convert", "--model", MODEL, "--weights", spec, "-o", qdir)
            check(r.returncode == 0, f"convert --weights {spec}: {r.stderr.strip()!r}")
        t = load_file(os.path.join(qdir, "model.safetensors"))
        with open(os.path.join(qdir, "model.safetensors"), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            meta = json.loads(f.read(n)).get("__metadata__")
        key = sorted(k for k in t if k.endswith(key_end))[0]
        a = t[key].copy()
        a.reshape(-1)[3] = value
        t[key] = a
        bdir = out("qbad")
        shutil.rmtree(bdir, ignore_errors=True)
        shutil.copytree(qdir, bdir)
        save_file(t, os.path.join(bdir, "model.safetensors"), metadata=meta)
        bad_input(["eval", "--model", bdir, "--text", TEXT, "--max-windows", "1"], must, f"{spec} {key} = {value}")

    category[0] = "GGUF headers and embedded tokenizers"
    # ---- GGUF: forged headers refused; its embedded tokenizer travels to GGUF and safetensors ----
    r = run("convert", "--model", MODEL, "--tokenizer", TOK, "--format", "gguf", "-o", out("g.gguf"))
    check(r.returncode == 0, f"convert to gguf: {r.stderr.strip()!r}")
    data = open(out("g.gguf"), "rb").read()
    for kw, must in [(dict(block_count=4), "block_count is 4"), (dict(nan_score=True), "scores[5] is nan"),
                     (dict(alias_tensors=True), "overlap")]:
        open(out("bad.gguf"), "wb").write(patch_gguf(data, **kw))
        bad_input(["eval", "--model", out("bad.gguf"), "--text", TEXT, "--max-windows", "1"], must, f"gguf {kw}")
    ref = run("eval", "--model", out("g.gguf"), "--text", TEXT, "--max-windows", "2", "--json", out("g.json"))
    check(ref.returncode == 0, f"eval g.gguf: {ref.stderr.strip()!r}")
    r = run("convert", "--model", out("g.gguf"), "--format", "gguf", "-o", out("g2.gguf"))
    check(r.returncode == 0, f"GGUF -> GGUF without --tokenizer: {r.stderr.strip()!r}")
    r = run("quantize", "--model", out("g.gguf"), "--weights", "int8:g32:sym:fp16", "-o", out("g3.gguf"))
    check(r.returncode == 0, f"quantize GGUF -> GGUF without --tokenizer: {r.stderr.strip()!r}")
    r = run("convert", "--model", out("g.gguf"), "-o", out("gdir"))
    check(r.returncode == 0, f"GGUF -> safetensors: {r.stderr.strip()!r}")
    names = sorted(os.listdir(out("gdir"))) if os.path.isdir(out("gdir")) else []
    check(names == ["config.json", "model.safetensors", "tokenizer.gguf"], f"GGUF -> safetensors folder: {names}")
    if "tokenizer.gguf" in names:
        size = os.path.getsize(os.path.join(out("gdir"), "tokenizer.gguf"))
        check(size < len(data) // 10, f"tokenizer.gguf is {size} bytes: the whole GGUF ({len(data)}) was copied")
    want = json.load(open(out("g.json")))["ppl"] if ref.returncode == 0 else None
    for m in (out("g2.gguf"), out("gdir")):
        r = run("eval", "--model", m, "--text", TEXT, "--max-windows", "2", "--json", out("m.json"))
        check(r.returncode == 0 and json.load(open(out("m.json")))["ppl"] == want,
              f"eval {m} (its tokenizer from the GGUF): {r.stderr.strip()!r}")

    category[0] = "flags and specs"
    # ---- flags: out-of-range, empty and contradicting values are usage errors before any work ----
    for args, must in [
            (["bench", "model", "--model", MODEL, "--prefill", "2147483647"], "--prefill"),
            (["bench", "model", "--model", MODEL, "--decode", "2147483647"], "--decode"),
            (["generate", "--model", MODEL, "--prompt", "Hi", "-n", "2147483647"], "-n"),
            (["schemes", "--shape", "9223372036854775807x9223372036854775807"], "--shape"),
            (["schemes", "--shape", "3037000500x3037000500"], "--shape"),
            (["schemes", "--shape", "4x4junk"], "--shape"),
            (["eval", "--model", MODEL, "--text", TEXT, "--weights", ""], "--weights"),
            (["eval", "--model", MODEL, "--text", TEXT, "--scheme", ""], "--scheme"),
            (["eval", "--model", MODEL, "--text", TEXT, "--weights", "int8:row", "--acts", ""], "--acts"),
            (["quantize", "--model", MODEL, "--scheme", "", "--dry-run"], "--scheme"),
            (["convert", "--model", MODEL, "--weights", "", "-o", out("never")], "--weights"),
            (["quantize", "--model", MODEL, "--weights", "int4:g128:asym:fp16:sym", "--dry-run"], "given twice"),
            (["quantize", "--model", MODEL, "--weights", "int4:g128:fp16:bf16", "--dry-run"], "given twice"),
            (["eval", "--model", MODEL, "--text", TEXT, "--stride", "-1"], "--stride"),
            (["eval", "--model", MODEL, "--text", TEXT, "--max-windows", "-3"], "--max-windows"),
            (["quantize", "--model", MODEL, "--scheme", "w8a8", "--eval", TEXT, "--eval-windows", "-1"], "--eval-windows"),
            (["quantize", "--model", MODEL, "--scheme", "w8a8", "--method", "smoothquant", "--alpha", "1.5", "--calib",
              TEXT, "-o", out("never")], "--alpha"),
            (["quantize", "--model", MODEL, "--scheme", "w8a8", "--method", "smoothquant", "--alpha", "-0.1", "--calib",
              TEXT, "-o", out("never")], "--alpha"),
            (["quantize", "--model", MODEL, "--scheme", "w8a8", "--act-order", "-o", out("never")], "--act-order"),
            (["generate", "--model", MODEL, "--prompt", "Hi", "--system", "be brief"], "--chat")]:
        bad_input(args, must, " ".join(a if len(a) < 40 else "..." for a in args[:1] + args[3:]), out=out("never"))
    category[0] = "messages"
    # Control bytes in a name are escaped, the message stays one line.
    weird = out("we\x1bird\nname\x07.bin")
    bad_input(["eval", "--model", weird, "--text", TEXT], "we\\x1bird\\x0aname\\x07.bin", "control bytes escaped")
    # ... and in warnings: the overlap warning names the calibration file.
    weird_text = out("we\x1bird\ntext.txt")
    shutil.copy(TEXT, weird_text)
    p = run("quantize", "--model", MODEL, "--scheme", "w8a8", "--calib", weird_text, "--calib-split", "all", "--eval",
            weird_text, "--eval-windows", "1")
    ok = p.returncode == 0 and "lowbit: warning: " in p.stderr and "we\\x1bird\\x0atext.txt" in p.stderr
    ok = ok and "\x1b" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    check(ok, f"warning with control bytes: exit {p.returncode}, stderr {p.stderr!r}")
    tally(ok)

if os.environ.get("LOWBIT_HOSTILE_TABLE"):
    print("| category | cases | handled as specified |")
    print("|---|---:|---:|")
    for cat, (n, ok) in TABLE.items():
        print(f"| {cat} | {n} | {ok} |")
    print(f"| total | {sum(v[0] for v in TABLE.values())} | {sum(v[1] for v in TABLE.values())} |")
finish("hostile-input CLI checks ok")

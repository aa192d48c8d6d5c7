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
import os
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import time

from clitest import LOWBIT, ROOT, bad_input, check, finish, run

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
                           (["eval", "--model", MODEL, "--text", TEXT, "--max-windows", "1", "--plot", node], "--plot")]:
            bad_input(args, node, f"{flag} {kind} ({args[0]} {' '.join(args[3:5])})", empty_stdout=False)
            check(os.lstat(node).st_mode == mode_before, f"{flag} {kind}: the node was replaced")
    check(open(out("victim.txt")).read() == "keep me", "a symlink's target was written")
    check(temps(tmp) == [], f"temp files left: {temps(tmp)}")

    # ---- an output equal to an input ----
    import shutil
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
    p = run("convert", "--model", out("m.bin"), "--tokenizer", TOK, "-o", out("folder"))
    check(p.returncode == 0, f"convert to a folder: {p.stderr.strip()!r}")
    bad_input(["convert", "--model", out("folder"), "-o", out("folder")], "--model", "-o folder = --model folder")
    bad_input(["eval", "--model", out("folder"), "--text", out("t.txt"), "--json",
               os.path.join(out("folder"), "model.safetensors")], "--model", "--json = the model's weights file")
    for p_, b in before.items():
        check(snapshot(out(p_)) == b, f"input {p_} changed")

    # ---- kill -9 / SIGTERM at many moments: old output or new, never a mix ----
    for fmt_args, target in [(["--format", "gguf"], out("k.gguf")), ([], out("kdir"))]:
        r = run("convert", "--model", MODEL, *fmt_args, "-o", target)
        check(r.returncode == 0, f"convert {target}: {r.stderr.strip()!r}")
        old = snapshot(target)
        r = run("convert", "--model", MODEL, "--scheme", "w4a16-g32", *fmt_args, "-o", target)
        new = snapshot(target)
        check(r.returncode == 0 and new != old, f"convert --scheme {target}: {r.stderr.strip()!r}")
        r = run("convert", "--model", MODEL, *fmt_args, "-o", target)
        check(snapshot(target) == old, "reconvert gives the same bytes")
        seen = {"old": 0, "new": 0}
        env = dict(os.environ, LOWBIT_NO_PROGRESS="1")
        for i in range(48):
            scheme = ["--scheme", "w4a16-g32"] if i % 2 == 0 else []
            proc = subprocess.Popen([LOWBIT, "convert", "--model", MODEL, *scheme, *fmt_args, "-o", target],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            time.sleep(0.0015 * (i // 2))  # 0 .. 35 ms: from before the first write to after the rename
            proc.send_signal(signal.SIGKILL if i % 3 else signal.SIGTERM)
            proc.wait()
            got = snapshot(target)
            if got == old:
                seen["old"] += 1
            elif got == new:
                seen["new"] += 1
            else:
                check(False, f"kill {i} ({target}): output is neither the old nor the new one")
            old, new = (old, new) if got == old else (new, old)  # the next run writes the other one
        check(seen["old"] > 0 and seen["new"] > 0, f"kills at every moment saw both outcomes: {seen}")
        r = run("convert", "--model", MODEL, *fmt_args, "-o", target)
        check(r.returncode == 0, f"convert after kills: {r.stderr.strip()!r}")
        check(temps(tmp) == [], f"temp files left after kills and one more run: {temps(tmp)}")

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
    sleeper.kill()
    sleeper.wait()
    os.unlink(live_tmp)

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

finish("hostile-input CLI checks ok")

"""lowbit quantize --stream (issue 15): a Hugging Face folder quantized block by block.
- Streamed output tensors equal the in-memory pipeline's byte for byte (stories260K converted to
  three-shard fp32 Hugging Face folder, RTN and GPTQ; SmolLM2-135M's first 3 blocks in bf16, RTN
  and GPTQ, skipped with a message when its GGUF is absent; an untied synthetic lm_head), with
  the embedding / classifier step in small row chunks (LOWBIT_STREAM_CHUNK_ROWS).
- A run stopped after a random block (LOWBIT_STREAM_STOP_AFTER_BLOCK, the test hook) and
  continued with --resume gives the same folder, file for file, as an uninterrupted run.
- Peak RSS of a 16-block and a 4-block synthetic model of one width differ by less than one
  block's f32 weights (flat in depth).
- Bad input (a shard missing): one line naming the file and tensor, exit 2, the output untouched.
- GGUF out (--stream -o m.gguf): the same file, byte for byte, as the in-memory quantize's GGUF
  (stories260K RTN and GPTQ, with its F16 fallbacks; the untied synthetic model with gguf-q4_0,
  gguf-q4_k_m and q8_0 plans, embedding / classifier blocks in ragged row chunks; SmolLM2's 3
  blocks with gguf-q4_0); stopped and resumed: the same file; a spec GGUF cannot hold: exit 2
  before block 0, one line naming the tensor, nothing left behind.

Usage: test_stream_cli.py LOWBIT_BINARY. Exits 77 (skip) when ../shared is missing.
"""
import glob
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

from clitest import ROOT, SANITIZED, SHARED, check, finish, run

MODEL = os.path.join(SHARED, "models", "stories260K.bin")
TOK = os.path.join(SHARED, "models", "tok512.bin")
TEXT = os.path.join(SHARED, "data", "tinystories_val.txt")
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
if not os.path.exists(MODEL):
    print(f"SKIP: {MODEL} not found (../shared is missing)")
    sys.exit(77)


def read_st(path):
    with open(path, "rb") as f:
        d = f.read()
    n = struct.unpack("<Q", d[:8])[0]
    h = json.loads(d[8:8 + n])
    meta = h.pop("__metadata__", {})
    return {k: (v["dtype"], v["shape"], d[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in h.items()}, meta


def tensors(folder):
    files = [os.path.join(folder, "model.safetensors")]
    if not os.path.exists(files[0]):
        files = sorted(glob.glob(os.path.join(folder, "model-*.safetensors")))
    out = {}
    for f in files:
        out.update(read_st(f)[0])
    return out


def write_st(path, entries):
    header, off, blobs = {}, 0, []
    for name, (dtype, shape, data) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    hj = json.dumps(header).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))


def shard(folder):
    """model.safetensors -> three shards + index, as save_pretrained would."""
    t, _ = read_st(os.path.join(folder, "model.safetensors"))
    names = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]
    parts = [{}, {}, {}]
    for k, v in t.items():
        i = 0 if k.startswith("model.layers.0.") or k.startswith("model.layers.1.") else 1 if k.startswith("model.layers.") else 2
        parts[i][k] = v
    write_shards(folder, names, parts)


def write_shards(folder, names, parts):
    """parts[i] -> shard names[i], the index naming them; the single-file model.safetensors removed."""
    wm = {}
    for name, p in zip(names, parts):
        write_st(os.path.join(folder, name), p)
        wm.update({k: name for k in p})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": wm}, f)
    os.remove(os.path.join(folder, "model.safetensors"))


def bf16_shards(folder, layers):
    """An fp32 model.safetensors -> its first `layers` blocks in bf16 (rounded to nearest even),
    three shards + index, config.json saying so."""
    import numpy as np
    t, _ = read_st(os.path.join(folder, "model.safetensors"))
    keep = {k: v for k, v in t.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    parts = [{}, {}, {}]
    for k, (dtype, shape, data) in keep.items():
        assert dtype == "F32", k
        u = np.frombuffer(data, np.uint32)
        b = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
        i = 0 if k.startswith("model.layers.0.") else 1 if k.startswith("model.layers.") else 2
        parts[i][k] = ("BF16", shape, b.tobytes())
    names = [f"model-0000{i + 1}-of-00003.safetensors" for i in range(3)]
    write_shards(folder, names, parts)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    cfg.update(num_hidden_layers=layers, torch_dtype="bfloat16")
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))


def run_fresh(*args, env=None):
    """run(), through a small shell: Linux keeps the RSS high-water mark across fork + exec, so a
    lowbit forked from this script (which has held whole safetensors files) would report this
    script's peak as its own peak RSS."""
    e = dict(os.environ, LOWBIT_NO_PROGRESS="1", **(env or {}))
    return subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.argv[1], *args], capture_output=True, text=True, env=e, timeout=900)


def files_of(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        with open(os.path.join(folder, f), "rb") as h:
            out[f] = h.read()
    return out


with tempfile.TemporaryDirectory() as tmp:
    hf = os.path.join(tmp, "hf")
    p = run("convert", "--model", MODEL, "--tokenizer", TOK, "-o", hf)
    check(p.returncode == 0, f"convert: {p.stderr}")
    full = {}
    for method in ("rtn", "gptq"):
        out = os.path.join(tmp, "full-" + method)
        p = run("quantize", "--model", hf, "--scheme", "w4a16-g32", "--method", method, "--calib", TEXT, "--calib-tokens", "512", "-o", out)
        check(p.returncode == 0, f"quantize {method}: {p.stderr}")
        full[method] = tensors(out)
    shard(hf)
    for method in ("rtn", "gptq"):
        out = os.path.join(tmp, "stream-" + method)
        js = os.path.join(tmp, method + ".json")
        # RTN: the embedding / classifier step in chunks of 7 rows (512 = 73 x 7 + 1: ragged last chunk)
        p = run_fresh("quantize", "--stream", "--model", hf, "--scheme", "w4a16-g32", "--method", method, "--calib", TEXT,
                "--calib-tokens", "512", "-o", out, "--json", js, env={"LOWBIT_STREAM_CHUNK_ROWS": "7"} if method == "rtn" else None)
        check(p.returncode == 0, f"quantize --stream {method}: {p.stderr}")
        got = tensors(out)
        check(set(got) == set(full[method]), f"{method}: streamed tensor names differ: {sorted(set(got) ^ set(full[method]))[:5]}")
        differ = [k for k in got if k in full[method] and got[k] != full[method][k]]
        check(not differ, f"{method}: streamed tensors differ from the in-memory pipeline's: {differ[:5]}")
        check(os.path.exists(os.path.join(out, "model.safetensors.index.json")), f"{method}: no index")
        check(not os.path.exists(out + ".partial"), f"{method}: the work folder was left behind")
        j = json.load(open(js))
        if not SANITIZED:  # under ASan RSS counts the sanitizer's shadow memory and quarantine
            check(j["peak_rss_bytes"] <= j["memory_formula_bytes"], f"{method}: peak RSS {j['peak_rss_bytes']} above the formula {j['memory_formula_bytes']}")
        # The streamed folder loads and runs.
        p = run("eval", "--model", out, "--text", TEXT, "--max-windows", "2") if method == "rtn" else None
        if p is not None:
            check(p.returncode == 0, f"eval of the streamed folder: {p.stderr}")

    # GGUF: one file laid out before block 0, each block's tensors written at their offsets.
    for method in ("rtn", "gptq"):
        common = ["--model", hf, "--scheme", "w4a16-g32", "--method", method, "--calib", TEXT, "--calib-tokens", "512"]
        for d in ("gguf-full-" + method, "gguf-stream-" + method):
            os.makedirs(os.path.join(tmp, d))
        p = run("quantize", *common, "-o", os.path.join(tmp, "gguf-full-" + method, "m.gguf"))
        check(p.returncode == 0, f"quantize {method} to GGUF: {p.stderr}")
        p = run("quantize", "--stream", *common, "-o", os.path.join(tmp, "gguf-stream-" + method, "m.gguf"),
                env={"LOWBIT_STREAM_CHUNK_ROWS": "7"} if method == "rtn" else None)
        check(p.returncode == 0 and "(GGUF)" in p.stdout, f"quantize --stream {method} to GGUF: {p.stdout} {p.stderr}")
        check("stored dequantized as F16" in p.stderr, f"{method}: the streamed GGUF's F16 fallbacks were not reported: {p.stderr}")
        full, got = (files_of(os.path.join(tmp, d)) for d in ("gguf-full-" + method, "gguf-stream-" + method))
        check(list(got) == ["m.gguf"], f"{method}: streamed GGUF folder holds {list(got)}")
        check(got == full, f"{method}: the streamed GGUF differs from the in-memory one ({len(got.get('m.gguf', b''))} vs {len(full['m.gguf'])} bytes)")
    block = random.Random(os.getpid() + 1).randrange(0, 4)
    g = os.path.join(tmp, "gguf-resumed", "m.gguf")
    os.makedirs(os.path.dirname(g))
    args = ["quantize", "--stream", "--model", hf, "--scheme", "w4a16-g32", "--method", "gptq", "--calib", TEXT, "--calib-tokens", "512", "-o", g]
    p = run(*args, env={"LOWBIT_STREAM_STOP_AFTER_BLOCK": str(block)})
    check(p.returncode != 0 and f"stopped after block {block}" in p.stderr, f"GGUF stop hook at block {block}: {p.returncode} {p.stderr}")
    check(not os.path.exists(g) and os.path.exists(g + ".partial"), "stopped GGUF run: expected only OUT.partial")
    p = run(*args, "--resume")
    check(p.returncode == 0 and f"(blocks {block + 1}..4)" in p.stdout, f"GGUF --resume after block {block}: {p.stdout} {p.stderr}")
    check(files_of(os.path.dirname(g)) == files_of(os.path.join(tmp, "gguf-stream-gptq")), f"GGUF resumed after block {block}: differs")

    # Stop after a random block, resume: the same folder, file for file.
    block = random.Random(os.getpid()).randrange(0, 4)
    out = os.path.join(tmp, "resumed")
    args = ["quantize", "--stream", "--model", hf, "--scheme", "w4a16-g32", "--method", "gptq", "--calib", TEXT, "--calib-tokens", "512", "-o", out]
    p = run(*args, env={"LOWBIT_STREAM_STOP_AFTER_BLOCK": str(block)})
    check(p.returncode != 0 and f"stopped after block {block}" in p.stderr, f"stop hook at block {block}: {p.returncode} {p.stderr}")
    check(not os.path.exists(out) and os.path.exists(out + ".partial"), "stopped run: expected only OUT.partial")
    p = run(*args, "--resume")
    check(p.returncode == 0, f"--resume: {p.stderr}")
    check(f"(blocks {block + 1}..4)" in p.stdout, f"--resume did not pick up after block {block}: {p.stdout}")
    check(files_of(out) == files_of(os.path.join(tmp, "stream-gptq")), f"resumed after block {block}: output differs from an uninterrupted run")

    # Bad input: a missing shard; the existing output stays as it was.
    os.remove(os.path.join(hf, "model-00002-of-00003.safetensors"))
    before = files_of(out)
    p = run(*args)
    check(p.returncode == 2, f"missing shard: exit {p.returncode}: {p.stderr}")
    check(len(p.stderr.strip().splitlines()) == 1 and "model-00002-of-00003.safetensors: shard is missing" in p.stderr
          and "for tensor model.layers.2." in p.stderr, f"missing shard message: {p.stderr!r}")
    check(files_of(out) == before and not os.path.exists(out + ".partial"), "missing shard: the output folder changed")

    make = os.path.join(ROOT, "scripts", "make_synthetic_model")
    # An untied lm_head (the synthetic model's), quantized and cast in chunks of 33 rows (vocab
    # 1000: ragged last chunk): the same tensors as the in-memory pipeline, for a plan whose
    # classifier is int8 per row (row blocks) and one whose embedding is a unit-scale fp16 cast.
    d = os.path.join(tmp, "untied")
    subprocess.run([sys.executable, make, "--layers", "2", "--dim", "128", "--hidden", "384", "--heads", "4",
                    "--kv-heads", "2", "--vocab", "1000", "--shard-mb", "1", "-o", d], check=True, capture_output=True)
    plan = os.path.join(tmp, "plan.json")
    with open(plan, "w") as f:
        json.dump({"classifier": "int8:row:sym:fp16"}, f)
    for extra in ([], ["--plan", plan]):
        p = run("quantize", "--model", d, "--scheme", "w4a16-g32", *extra, "-o", d + "-full")
        check(p.returncode == 0, f"untied in memory {extra}: {p.stderr}")
        p = run("quantize", "--stream", "--model", d, "--scheme", "w4a16-g32", *extra, "-o", d + "-stream", env={"LOWBIT_STREAM_CHUNK_ROWS": "33"})
        check(p.returncode == 0, f"untied streamed {extra}: {p.stderr}")
        full, got = tensors(d + "-full"), tensors(d + "-stream")
        check("lm_head.weight.qweight" in got or "lm_head.weight" in got, f"untied {extra}: no lm_head in {sorted(got)[:8]}")
        check(got == full, f"untied {extra}: streamed tensors differ: {sorted(k for k in set(got) | set(full) if got.get(k) != full.get(k))[:5]}")
    # GGUF: ggml-block plans (the untied embedding and classifier as blocks, in 33-row chunks),
    # and a classifier spec GGUF cannot hold: refused before block 0, nothing left behind.
    for scheme in ("gguf-q4_0", "gguf-q4_k_m", "q8_0"):
        outs = [os.path.join(tmp, f"untied-{k}-{scheme}", "m.gguf") for k in ("full", "stream")]
        for o in outs:
            os.makedirs(os.path.dirname(o))
        p = run("quantize", "--model", d, "--scheme", scheme, "-o", outs[0])
        check(p.returncode == 0, f"untied {scheme} to GGUF: {p.stderr}")
        p = run("quantize", "--stream", "--model", d, "--scheme", scheme, "-o", outs[1], env={"LOWBIT_STREAM_CHUNK_ROWS": "33"})
        check(p.returncode == 0, f"untied {scheme} streamed to GGUF: {p.stderr}")
        a, b = (open(o, "rb").read() for o in outs)
        check(a == b, f"untied {scheme}: the streamed GGUF differs from the in-memory one ({len(b)} vs {len(a)} bytes)")
    bad = os.path.join(tmp, "untied-bad", "m.gguf")
    os.makedirs(os.path.dirname(bad))
    p = run("quantize", "--stream", "--model", d, "--scheme", "q4_0", "--plan", plan, "-o", bad)
    check(p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "output.weight (classifier)" in p.stderr
          and "GGUF cannot hold" in p.stderr, f"GGUF-less classifier spec: {p.returncode} {p.stderr!r}")
    check(os.listdir(os.path.dirname(bad)) == [], f"GGUF-less classifier spec left {os.listdir(os.path.dirname(bad))}")

    # SmolLM2-135M (dequantized from its Q4_1 GGUF, stored bf16, 3 of its 30 blocks to stay
    # short: width 576, GQA 9/3 heads, vocab 49152, tied embedding): streamed == in memory, RTN
    # (embedding cast in 4000-row chunks) and GPTQ.
    smol = next((q for q in (os.path.join(SHARED, "models", SMOL), os.path.join(ROOT, ".cache", "models", SMOL)) if os.path.exists(q)), None)
    if smol is None:
        print(f"SKIP (SmolLM2 part only): {SMOL} not in ../shared/models/ or .cache/models/ (scripts/setup extracts it)")
    else:
        sd = os.path.join(tmp, "smol")
        p = run("convert", "--model", smol, "-o", sd)
        check(p.returncode == 0, f"convert SmolLM2: {p.stderr}")
        bf16_shards(sd, 3)
        for method in ("rtn", "gptq"):
            common = ["--model", sd, "--scheme", "w4a16-g32", "--method", method, "--calib", TEXT, "--calib-tokens", "256", "--ctx", "128"]
            p = run("quantize", *common, "-o", sd + "-full-" + method)
            check(p.returncode == 0, f"SmolLM2 {method} in memory: {p.stderr}")
            p = run("quantize", "--stream", *common, "-o", sd + "-stream-" + method, env={"LOWBIT_STREAM_CHUNK_ROWS": "4000"} if method == "rtn" else None)
            check(p.returncode == 0, f"SmolLM2 {method} streamed: {p.stderr}")
            full, got = tensors(sd + "-full-" + method), tensors(sd + "-stream-" + method)
            check(len(got) > 20 and "lm_head.weight.qweight" in got, f"SmolLM2 {method}: streamed tensors {sorted(got)[:8]}")
            check(got == full, f"SmolLM2 {method}: streamed tensors differ: {sorted(k for k in set(got) | set(full) if got.get(k) != full.get(k))[:5]}")
            shutil.rmtree(sd + "-full-" + method)
            shutil.rmtree(sd + "-stream-" + method)
        outs = [os.path.join(tmp, f"smol-{k}", "m.gguf") for k in ("full", "stream")]
        for o in outs:
            os.makedirs(os.path.dirname(o))
        p = run("quantize", "--model", sd, "--scheme", "gguf-q4_0", "-o", outs[0])
        check(p.returncode == 0, f"SmolLM2 gguf-q4_0 in memory: {p.stderr}")
        p = run("quantize", "--stream", "--model", sd, "--scheme", "gguf-q4_0", "-o", outs[1], env={"LOWBIT_STREAM_CHUNK_ROWS": "4000"})
        check(p.returncode == 0, f"SmolLM2 gguf-q4_0 streamed: {p.stderr}")
        a, b = (open(o, "rb").read() for o in outs)
        check(a == b, f"SmolLM2 gguf-q4_0: the streamed GGUF differs from the in-memory one ({len(b)} vs {len(a)} bytes)")
        shutil.rmtree(sd)

    # Flat in depth: 4 and 16 blocks of one width (a release-build property: ASan holds freed memory back).
    if SANITIZED:
        print("peak RSS in depth: not measured under ASan (its quarantine keeps freed blocks)")
        finish()
    peaks = {}
    for layers in (4, 16):
        d = os.path.join(tmp, f"syn{layers}")
        subprocess.run([sys.executable, make, "--layers", str(layers), "--dim", "512", "--hidden", "1536", "--heads", "8",
                        "--kv-heads", "4", "--vocab", "1000", "--shard-mb", "8", "-o", d], check=True, capture_output=True)
        js = os.path.join(tmp, f"syn{layers}.json")
        p = run_fresh("quantize", "--stream", "--model", d, "--scheme", "w4a16-g128", "-o", d + "-q", "--json", js)
        check(p.returncode == 0, f"synthetic {layers}: {p.stderr}")
        peaks[layers] = json.load(open(js))["peak_rss_bytes"]
        shutil.rmtree(d)
    block_f32 = 4 * (2 * 512 + 2 * 512 * 512 + 2 * 256 * 512 + 3 * 1536 * 512)
    check(abs(peaks[16] - peaks[4]) < block_f32, f"peak RSS 16 blocks {peaks[16]} vs 4 blocks {peaks[4]}: differ by more than one block ({block_f32})")
    print(f"peak RSS: 4 blocks {peaks[4] / 2**20:.1f} MiB, 16 blocks {peaks[16] / 2**20:.1f} MiB, one f32 block {block_f32 / 2**20:.1f} MiB")

finish()

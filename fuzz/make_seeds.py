"""Writes the seed corpora scripts/fuzz starts from: tiny llama2.c / GGUF / safetensors models
(made here, plus converted by the release `lowbit` when given), tokenizers from ../shared when
present, QuantSpec texts and --plan JSON. Usage: make_seeds.py OUT_DIR [LOWBIT_BINARY]."""
import json
import os
import shutil
import struct
import subprocess
import sys

out = sys.argv[1]
lowbit = sys.argv[2] if len(sys.argv) > 2 else None
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
shared = os.path.join(root, "..", "shared", "models")


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# A llama2.c v0 checkpoint: dim 8, hidden 16, 1 layer, 2 heads, vocab 32, seq 8 (run.c's layout).
def llama2c_v0(vocab):
    dim, hid, layers, heads, kv, seq = 8, 16, 1, 2, 2, 8
    hd = dim // heads
    n = (vocab * dim + layers * dim + layers * dim * dim * 2 + layers * dim * (kv * hd) * 2 + layers * dim +
         layers * hid * dim * 3 + dim + seq * hd // 2 * 2)
    vals = [((i * 2654435761) % 1000) / 1000.0 - 0.5 for i in range(n)]
    return struct.pack("<7i", dim, hid, layers, heads, kv, vocab, seq) + struct.pack(f"<{n}f", *vals)


v0 = llama2c_v0(32)
put("llama2c", "tiny_v0.bin", v0)
put("llama2c", "empty.bin", b"")
put("llama2c", "ak42.bin", b"ak42" + struct.pack("<i", 1) + v0[:28] + b"\0" * 64)
tmp = os.path.join(out, "_tmp")
os.makedirs(tmp, exist_ok=True)
with open(os.path.join(tmp, "tiny.bin"), "wb") as f:
    f.write(v0)
with open(os.path.join(tmp, "tiny512.bin"), "wb") as f:
    f.write(llama2c_v0(512))
# A llama2.c tokenizer.bin: max_token_length, then (score, len, bytes) per token.
recs = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [bytes([b]) for b in range(256)] + [b" a", b"ab", b" the"]
tok = struct.pack("<i", 8) + b"".join(struct.pack("<fi", -float(i), len(r)) + r for i, r in enumerate(recs))
put("tokenizer", "tiny_llama2c.bin", tok)
for name in ("tok512.bin", "tok512.model"):
    if os.path.exists(os.path.join(shared, name)):
        shutil.copy(os.path.join(shared, name), os.path.join(out, "tokenizer", name))
put("text", "story.txt", "Once upon a time, there was a little cat.\n\nThe end. 123 naïve 🦙\n")
put("text", "letters.txt", "a" * 300)
if lowbit:
    env = dict(os.environ, LOWBIT_NO_PROGRESS="1")
    model = os.path.join(tmp, "tiny.bin")
    for args, src, target, name in [
            (["--format", "gguf", "--no-tokenizer", "-o"], "t.gguf", "gguf", "tiny_f32.gguf"),
            (["--format", "gguf", "--no-tokenizer", "--weights", "int8:g32:sym:fp16", "-o"], "q8.gguf", "gguf", "tiny_q8_0.gguf"),
            (["--no-tokenizer", "-o"], "st", "safetensors", None),
            (["--no-tokenizer", "--weights", "int4:g8:asym:fp16", "-o"], "stq", "safetensors", None)]:
        p = subprocess.run([lowbit, "convert", "--model", model, *args, os.path.join(tmp, src)], capture_output=True,
                           text=True, env=env)
        if p.returncode != 0:
            print("make_seeds: convert failed:", p.stderr.strip(), file=sys.stderr)
            continue
        if name:
            put(target, name, open(os.path.join(tmp, src), "rb").read())
        else:  # fuzz_safetensors input: config.json, 0xFF 0x00 0xFF, model.safetensors
            cfg = open(os.path.join(tmp, src, "config.json"), "rb").read()
            st = open(os.path.join(tmp, src, "model.safetensors"), "rb").read()
            put("safetensors", src + ".bin", cfg + b"\xff\x00\xff" + st)
            put("safetensors", src + "_weights_only.bin", st)
    tokp = os.path.join(shared, "tok512.model")
    if os.path.exists(tokp):
        p = subprocess.run([lowbit, "convert", "--model", os.path.join(tmp, "tiny512.bin"), "--format", "gguf", "--tokenizer", tokp, "-o",
                            os.path.join(tmp, "tok.gguf")], capture_output=True, text=True, env=env)
        if p.returncode == 0:
            data = open(os.path.join(tmp, "tok.gguf"), "rb").read()
            put("gguf", "tiny_with_tokenizer.gguf", data)
            put("tokenizer", "tiny_with_tokenizer.gguf", data)
shutil.rmtree(tmp, ignore_errors=True)
for s in ["int4:g128:sym:fp16", "int8:row", "e4m3:block128x128:fp32", "e2m1:g16:e4m3*fp32", "int4:g32:asym:bf16:mse",
          "nf4:g64:sym:fp16:p99.9", "e5m2:tensor:fp32:sr7:sat", "mxfp4", "uint3:g64:asym:fp16", "fp16:tensor:unit"]:
    put("spec", s.replace(":", "_").replace("*", "x") + ".txt", s)
put("plan", "plan.json", json.dumps({"layers.*.wq": "int8:row", "tok_embeddings": "fp32", "classifier": "int4:g32:sym:fp16"}))
put("plan", "empty.json", "{}")

"""lowbit convert, checked from outside: the gguf and safetensors packages read what it writes.

Usage: test_save_cli.py LOWBIT_BINARY. Exits 77 (skip) when ../shared is missing.
- GGUF: every llama.* / general.* / tokenizer.ggml.* key has the model's value, F32 tensors equal
  the llama2.c checkpoint's, Q8_0 tensors (dequantized by gguf) are within half a step of them.
- safetensors: Hugging Face names, config.json, q/k rows such that llama.cpp's convert_hf_to_gguf
  permutation of them gives the GGUF's (i.e. the rotate-half order Hugging Face uses), and
  lowbit's int4 layout dequantized in numpy within half a step of the checkpoint.
- eval / generate run on the outputs; a failed convert leaves the previous output intact.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from clitest import LOWBIT, ROOT, check, failures, finish, run  # noqa: F401
MODELS = os.path.join(ROOT, "..", "shared", "models")
MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.model")
TEXT = os.path.join(ROOT, "..", "shared", "data", "tinystories_val.txt")






if not os.path.exists(MODEL):
    print(f"SKIP: {MODEL} not found (../shared is missing)")
    sys.exit(77)

import gguf  # noqa: E402  (test venv)
from safetensors import safe_open  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests", "model"))
from ref_llama2c import load_v0  # noqa: E402  (the numpy llama2.c reader)


def hf_to_gguf_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: Hugging Face q/k rows -> GGUF's."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


cfg, ref = load_v0(MODEL)  # ref["wq"][l] is layer l's wq; keys as ref_llama2c.py names them
cfg.update(layers=cfg["n_layers"], heads=cfg["n_heads"], kv_heads=cfg["n_kv_heads"], seq=cfg["seq_len"],
           hd=cfg["head_size"])
ref["norm"] = ref["rms_final"]
SLOTS = [("wq", "attn_q", "self_attn.q_proj"), ("wk", "attn_k", "self_attn.k_proj"), ("wv", "attn_v", "self_attn.v_proj"),
         ("wo", "attn_output", "self_attn.o_proj"), ("w1", "ffn_gate", "mlp.gate_proj"), ("w2", "ffn_down", "mlp.down_proj"),
         ("w3", "ffn_up", "mlp.up_proj")]

with tempfile.TemporaryDirectory() as tmp:
    out = lambda name: os.path.join(tmp, name)  # noqa: E731

    # ---- CLI surface ----
    p = run("convert", "--help")
    check(p.returncode == 0 and "--format" in p.stdout and "--scheme" in p.stdout, f"convert --help: {p.stdout[:300]!r}")
    p = run("convert", "--model", MODEL, "-o", out("x"), "--format", "onnx")
    check(p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "onnx" in p.stderr,
          f"bad --format: exit {p.returncode}, {p.stderr!r}")
    p = run("convert", "--model", out("missing.bin"), "-o", out("x"))
    check(p.returncode == 2 and "missing.bin" in p.stderr and not os.path.exists(out("x")), f"missing model: {p.stderr!r}")

    # ---- GGUF, fp32 ----
    p = run("convert", "--model", MODEL, "--tokenizer", TOK, "-o", out("f32.gguf"), "--format", "gguf", "--json")
    check(p.returncode == 0, f"convert f32 gguf: {p.stderr}")
    summary = json.loads(p.stdout)
    check(summary["format"] == "gguf" and summary["bytes"] == os.path.getsize(out("f32.gguf")), f"json: {summary}")
    r = gguf.GGUFReader(out("f32.gguf"))
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    want = {
        "general.architecture": "llama", "general.file_type": 0,
        "llama.context_length": cfg["seq"], "llama.embedding_length": cfg["dim"], "llama.block_count": cfg["layers"],
        "llama.feed_forward_length": cfg["hidden"], "llama.attention.head_count": cfg["heads"],
        "llama.attention.head_count_kv": cfg["kv_heads"], "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": np.float32(1e-5), "llama.rope.dimension_count": cfg["hd"],
        "llama.vocab_size": cfg["vocab"], "tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
    }
    for k, v in want.items():
        check(k in fields and fields[k] == v, f"gguf {k} = {fields.get(k)!r}, expected {v!r}")
    tokens, types, scores = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"], fields["tokenizer.ggml.scores"]
    check(len(tokens) == len(types) == len(scores) == cfg["vocab"], "gguf vocab lengths")
    check(tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[3] == "<0x00>" and tokens[259] == "\u2581t",
          f"gguf tokens: {tokens[:4]} {tokens[259]!r}")
    check(types[:4] == [2, 3, 3, 6] and types[259] == 1, f"gguf token types: {types[:4]} {types[259]}")
    tensors = {t.name: t for t in r.tensors}
    check(len(tensors) == 2 + 9 * cfg["layers"], f"gguf tensor count {len(tensors)}")
    check(all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors), "fp32 gguf: not all F32")
    check(np.array_equal(tensors["token_embd.weight"].data, ref["tok"]), "token_embd != checkpoint")
    check(np.array_equal(tensors["output_norm.weight"].data, ref["norm"]), "output_norm != checkpoint")
    for l in range(cfg["layers"]):
        check(np.array_equal(tensors[f"blk.{l}.attn_norm.weight"].data, ref["rms_att"][l]), f"blk.{l}.attn_norm")
        check(np.array_equal(tensors[f"blk.{l}.ffn_norm.weight"].data, ref["rms_ffn"][l]), f"blk.{l}.ffn_norm")
        for ours, gname, _ in SLOTS:
            t = tensors[f"blk.{l}.{gname}.weight"]
            check(np.array_equal(t.data, ref[ours][l]), f"blk.{l}.{gname} != checkpoint {ours}")

    # ---- GGUF, Q8_0 (ffn_down's 172-wide rows fall back to F16) ----
    p = run("convert", "--model", MODEL, "--tokenizer", TOK, "-o", out("q8.gguf"), "--format", "gguf",
            "--weights", "int8:g32:sym:fp16", "--json")
    check(p.returncode == 0, f"convert q8 gguf: {p.stderr}")
    warn = p.stderr.strip().splitlines()
    check(len(warn) == cfg["layers"] and all("ffn_down" in w and "F16" in w for w in warn), f"q8 warnings: {warn}")
    summary = json.loads(p.stdout)
    stored = {t["name"]: t["stored"] for t in summary["tensors"]}
    check(stored["blk.0.attn_q.weight"] == "Q8_0" and stored["blk.0.ffn_down.weight"] == "F16", f"q8 stored: {stored}")
    r = gguf.GGUFReader(out("q8.gguf"))
    check(r.fields["general.file_type"].contents() == 7, "q8 general.file_type != MOSTLY_Q8_0 (7)")
    for t in r.tensors:
        if not t.name.startswith("blk.") or "norm" in t.name:
            continue
        l, gname = int(t.name.split(".")[1]), t.name.split(".")[2]
        x = ref[[s for s, g, _ in SLOTS if g == gname][0]][l]
        deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape(x.shape).astype(np.float32)
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            step = np.abs(x).reshape(x.shape[0], -1, 32).max(axis=2) / 127  # the group's scale
            err = np.abs(deq - x).reshape(x.shape[0], -1, 32)
            check(np.all(err <= step[..., None] * 0.5 * 1.002 + 1e-12), f"{t.name}: Q8_0 error beyond half a step")
        else:
            check(t.tensor_type == gguf.GGMLQuantizationType.F16 and gname == "ffn_down", f"{t.name}: {t.tensor_type}")
            check(np.max(np.abs(deq - x)) <= np.abs(x).max() / 127, f"{t.name}: F16 fallback far from the weights")

    # ---- safetensors, fp32: names, config, Hugging Face q/k order ----
    p = run("convert", "--model", MODEL, "--tokenizer", TOK, "-o", out("st32"))
    check(p.returncode == 0, f"convert st32: {p.stderr}")
    check(sorted(os.listdir(out("st32"))) == ["config.json", "model.safetensors", "tokenizer.model"],
          f"st32 files: {os.listdir(out('st32'))}")
    hf = json.load(open(out("st32/config.json")))
    for k, v in dict(model_type="llama", hidden_size=cfg["dim"], intermediate_size=cfg["hidden"],
                     num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                     num_key_value_heads=cfg["kv_heads"], vocab_size=cfg["vocab"], tie_word_embeddings=True,
                     max_position_embeddings=cfg["seq"]).items():
        check(hf.get(k) == v, f"config.json {k} = {hf.get(k)!r}, expected {v!r}")
    with safe_open(out("st32/model.safetensors"), "numpy") as f:
        check(f.metadata().get("format") == "pt", f"safetensors metadata: {f.metadata()}")
        check("lm_head.weight" not in f.keys(), "tied model has an lm_head")
        check(np.array_equal(f.get_tensor("model.embed_tokens.weight"), ref["tok"]), "embed_tokens != checkpoint")
        for l in range(cfg["layers"]):
            for ours, gname, hname in SLOTS:
                w = f.get_tensor(f"model.layers.{l}.{hname}.weight")
                if ours in ("wq", "wk"):
                    n = cfg["heads"] if ours == "wq" else cfg["kv_heads"]
                    check(np.array_equal(hf_to_gguf_permute(w, n), ref[ours][l]),
                          f"{hname}: convert_hf_to_gguf's permutation does not give the checkpoint's rows")
                    check(not np.array_equal(w, ref[ours][l]), f"{hname}: rows not in Hugging Face order")
                else:
                    check(np.array_equal(w, ref[ours][l]), f"model.layers.{l}.{hname} != checkpoint")

    # ---- safetensors, int4 g128: lowbit's layout dequantized in numpy ----
    p = run("convert", "--model", MODEL, "-o", out("st4"), "--weights", "int4:g128:sym:fp16")
    check(p.returncode == 0, f"convert st4: {p.stderr}")
    with safe_open(out("st4/model.safetensors"), "numpy") as f:
        qc = json.loads(f.metadata()["quantization_config"])
        check(qc["quant_method"] == "lowbit" and len(qc["tensors"]) == 7 * cfg["layers"], f"quantization_config: {qc}")
        for l in range(cfg["layers"]):
            for ours, _, hname in SLOTS:
                name = f"model.layers.{l}.{hname}.weight"
                check(qc["tensors"][name]["spec"] == "int4:g128:sym:fp16", f"{name} spec")
                packed = f.get_tensor(name + ".qweight")
                scales = f.get_tensor(name + ".scales").astype(np.float32)  # (rows, groups)
                nib = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1).astype(np.int8)
                codes = np.where(nib >= 8, nib - 16, nib)
                x = ref[ours][l]
                if ours in ("wq", "wk"):
                    x = x[np.argsort(hf_to_gguf_permute(np.arange(x.shape[0]), cfg["heads"] if ours == "wq" else cfg["kv_heads"]))]
                codes = codes[:, :x.shape[1]]
                step = np.repeat(scales, 128, axis=1)[:, :x.shape[1]]
                check(np.all(np.abs(codes * step - x) <= step * 0.5 * 1.002), f"{name}: int4 layout off")

    # ---- load back through the CLI ----
    base = run("generate", "--model", MODEL, "--prompt", "Once upon a time", "-n", "64", "--ids").stdout.split()
    check(len(base) == 64, "reference generate")
    for args in (["--model", out("st32")], ["--model", out("f32.gguf"), "--tokenizer", TOK]):
        p = run("generate", *args, "--prompt", "Once upon a time", "-n", "64", "--ids")
        check(p.returncode == 0 and p.stdout.split() == base, f"generate {args}: {p.stderr} {p.stdout[:100]!r}")
    if os.path.exists(TEXT):
        p = run("eval", "--model", out("st4"), "--text", TEXT, "--ctx", "64", "--max-windows", "2", "--json", out("e.json"))
        check(p.returncode == 0, f"eval on st4: {p.stderr}")
        e = json.load(open(out("e.json")))
        check(4.0 < e["bpw"] < 5.0 and e["file_bytes"] > 0, f"eval bpw {e['bpw']} file_bytes {e['file_bytes']}")

    # ---- a failed convert leaves the previous output intact ----
    before = open(out("f32.gguf"), "rb").read()
    p = run("convert", "--model", MODEL, "--tokenizer", TOK, "-o", out("f32.gguf"), "--format", "gguf",
            "--scheme", "w4a16-g128")
    lines = p.stderr.strip().splitlines()
    check(p.returncode == 2 and len(lines) == 1 and "blk.0.attn_q.weight" in lines[0] and "int4:g128:sym:fp16" in lines[0],
          f"int4:g128 to gguf: exit {p.returncode}, {p.stderr!r}")
    check(open(out("f32.gguf"), "rb").read() == before, "failed convert changed the previous GGUF")
    check(sorted(os.listdir(tmp)) == sorted(["f32.gguf", "q8.gguf", "st32", "st4", "e.json"]) or
          sorted(os.listdir(tmp)) == sorted(["f32.gguf", "q8.gguf", "st32", "st4"]), f"leftovers: {os.listdir(tmp)}")

finish("all convert checks passed")

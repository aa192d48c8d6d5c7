#!/usr/bin/env python3
"""Cross-checks lowbit's GGUF reader and writer against the `gguf` package (ggml's own Python
library), in two steps around the C++ test GgufCrossCheck.* (tests/model/gguf_test.cc):

  gguf_crosscheck.py write=DIR   before: writes GGUF files with gguf.GGUFWriter and, beside each
                                 tensor, NAME.f32 = gguf.quants.dequantize() of it (raw little-endian f32)
      py_types.gguf  one tensor per ggml type lowbit dequantizes: from gguf.quants.quantize() where
                     the package can quantize the type, and from random block bytes for every type
                     (the only way to get the k-quants and IQ4 types, which the package only dequantizes)
      py_llama.gguf  a tiny Llama (2 layers, dim 64) with quantized, f16, bf16 and f32 weights
  gguf_crosscheck.py read=DIR    after: reads cpp_out.gguf (written by lowbit's write_gguf) with
                                 gguf.GGUFReader and checks metadata, types, shapes and that
                                 gguf.quants.dequantize() equals lowbit's dequantize() (cpp.*.f32)

Comparisons are bit for bit. Exits non-zero on the first mismatch.
"""
import os
import shutil
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V


def fail(msg):
    print(f"gguf_crosscheck: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def save_expected(out, name, values):
    np.ascontiguousarray(values, dtype=np.float32).reshape(-1).astype("<f4").tofile(os.path.join(out, name + ".f32"))


def random_halves(rng, n, scale):
    # Finite fp16 values: NaN payload handling is not what is being compared.
    return (rng.standard_normal(n) * scale).astype(np.float16).view(np.uint8).reshape(n, 2)


def random_blocks(rng, qtype, n_blocks):
    """Random bytes for n_blocks blocks of qtype, with the fp16 scale fields set to finite values."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    halves = {  # byte offsets of the fp16 fields in each block (ggml-common.h)
        T.Q4_0: [0], T.Q8_0: [0], T.Q5_0: [0],
        T.Q4_1: [0, 2], T.Q5_1: [0, 2], T.Q4_K: [0, 2],
        T.Q6_K: [208], T.Q2_K: [80, 82], T.Q3_K: [108], T.Q5_K: [0, 2],
        T.IQ4_NL: [0], T.IQ4_XS: [0],
    }[qtype]
    for off in halves:
        b[:, off:off + 2] = random_halves(rng, n_blocks, 0.05)
    return b


def write_types(out, rng):
    w = gguf.GGUFWriter(os.path.join(out, "py_types.gguf"), "lowbit-crosscheck")
    w.add_uint32("crosscheck.u32", 123456789)
    w.add_float32("crosscheck.f32", 0.1)
    w.add_array("crosscheck.strings", ["a", "bb", "ccc"])
    rows, cols = 3, 512
    x = (rng.standard_normal((rows, cols)) * 2).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block: d = 0
    tensors = []
    # Float types.
    tensors.append(("f32.data", x, None))
    tensors.append(("f16.data", x.astype(np.float16), None))
    tensors.append(("f16.random", rng.standard_normal((rows, cols)).astype(np.float16), None))
    tensors.append(("bf16.data", gguf.quants.quantize(x, T.BF16), T.BF16))
    tensors.append(("bf16.random", rng.integers(0, 1 << 16, size=(rows, cols), dtype=np.uint16).view(np.uint8)
                    .reshape(rows, 2 * cols), T.BF16))
    # Block types: quantize() where the package can, random blocks for all.
    for qtype in (T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL,
                  T.IQ4_XS):
        name = qtype.name.lower()
        try:
            q = gguf.quants.quantize(x, qtype)
            tensors.append((f"{name}.data", q, qtype))
        except NotImplementedError:
            pass
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = rows * cols // block
        tensors.append((f"{name}.random", random_blocks(rng, qtype, n_blocks).reshape(rows, -1), qtype))
    for name, data, qtype in tensors:
        if qtype is None:
            w.add_tensor(name, data)
            expected = data.astype(np.float32)
        else:
            w.add_tensor(name, data, raw_dtype=qtype)
            expected = gguf.quants.dequantize(data, qtype)
        save_expected(out, name, expected)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_llama(out, rng):
    dim, hidden, layers, heads, kv_heads, vocab = 64, 128, 2, 4, 2, 32
    kv_dim = dim // heads * kv_heads
    w = gguf.GGUFWriter(os.path.join(out, "py_llama.gguf"), "llama")
    w.add_context_length(16)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(vocab)])

    def add(name, shape, qtype, norm=False):
        x = (rng.standard_normal(shape) * (0.1 if norm else 0.3)).astype(np.float32)
        if norm:
            x += 1.0
        if qtype == T.F32:
            w.add_tensor(name, x)
            expected = x
        elif qtype == T.F16:
            h = x.astype(np.float16)
            w.add_tensor(name, h)
            expected = h.astype(np.float32)
        else:
            q = gguf.quants.quantize(x, qtype)
            w.add_tensor(name, q, raw_dtype=qtype)
            expected = gguf.quants.dequantize(q, qtype)
        save_expected(out, "llama." + name, expected)

    add("token_embd.weight", (vocab, dim), T.Q8_0)
    types = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16, T.BF16]
    for l in range(layers):
        p = f"blk.{l}."
        add(p + "attn_norm.weight", (dim,), T.F32, norm=True)
        add(p + "attn_q.weight", (dim, dim), types[(l + 0) % len(types)])
        add(p + "attn_k.weight", (kv_dim, dim), types[(l + 1) % len(types)])
        add(p + "attn_v.weight", (kv_dim, dim), types[(l + 2) % len(types)])
        add(p + "attn_output.weight", (dim, dim), types[(l + 3) % len(types)])
        add(p + "ffn_norm.weight", (dim,), T.F32, norm=True)
        add(p + "ffn_gate.weight", (hidden, dim), types[(l + 4) % len(types)])
        add(p + "ffn_down.weight", (dim, hidden), types[(l + 5) % len(types)])
        add(p + "ffn_up.weight", (hidden, dim), types[(l + 6) % len(types)])
    add("output_norm.weight", (dim,), T.F32, norm=True)
    add("output.weight", (vocab, dim), T.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# What GgufCrossCheck.WritesFilesForGgufPython writes: key -> (value type, value).
CPP_METADATA = {
    "general.architecture": (V.STRING, "llama"),
    "cpp.u8": (V.UINT8, 7),
    "cpp.i8": (V.INT8, -7),
    "cpp.u16": (V.UINT16, 65535),
    "cpp.i16": (V.INT16, -32768),
    "cpp.u32": (V.UINT32, 4000000000),
    "cpp.i32": (V.INT32, -123456),
    "cpp.f32": (V.FLOAT32, 1.25),
    "cpp.bool": (V.BOOL, True),
    "cpp.string": (V.STRING, "lowbit"),
    "cpp.u64": (V.UINT64, 1 << 50),
    "cpp.i64": (V.INT64, -5),
    "cpp.f64": (V.FLOAT64, 2.5),
    "cpp.strings": (V.ARRAY, ["x", "yz"]),
    "cpp.i32s": (V.ARRAY, [1, -2, 3]),
}
CPP_TENSORS = {  # name -> (ggml type, numpy shape (rows, cols))
    "cpp.f32": (T.F32, (6, 64)),
    "cpp.f16": (T.F16, (6, 64)),
    "cpp.q8_0": (T.Q8_0, (6, 64)),
    "cpp.q4_0": (T.Q4_0, (6, 64)),
    "cpp.vec": (T.F32, (64,)),
}


def read_cpp(out):
    path = os.path.join(out, "cpp_out.gguf")
    if not os.path.exists(path):
        fail(f"{path} is missing: GgufCrossCheck.WritesFilesForGgufPython did not run or failed")
    r = gguf.GGUFReader(path)
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    if list(fields) != list(CPP_METADATA):
        fail(f"metadata keys {list(fields)} != {list(CPP_METADATA)}")
    for key, (vtype, want) in CPP_METADATA.items():
        f = fields[key]
        if f.types[0] != vtype:
            fail(f"{key}: type {f.types[0].name}, expected {vtype.name}")
        got = f.contents()
        if got != want:
            fail(f"{key}: {got!r} != {want!r}")
    if [t.name for t in r.tensors] != list(CPP_TENSORS):
        fail(f"tensor names {[t.name for t in r.tensors]} != {list(CPP_TENSORS)}")
    for t in r.tensors:
        qtype, shape = CPP_TENSORS[t.name]
        if t.tensor_type != qtype:
            fail(f"{t.name}: type {t.tensor_type.name}, expected {qtype.name}")
        if list(t.shape) != list(reversed(shape)):  # the reader reports ggml order
            fail(f"{t.name}: ggml dims {list(t.shape)}, expected {list(reversed(shape))}")
        if t.data_offset % 32 != 0:
            fail(f"{t.name}: data at file offset {t.data_offset}, not 32-byte aligned")
        got = np.asarray(gguf.quants.dequantize(t.data, qtype), dtype=np.float32).reshape(-1)
        want = np.fromfile(os.path.join(out, t.name + ".f32"), dtype="<f4")
        if got.shape != want.shape or not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
            bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32)) if got.shape == want.shape else []
            fail(f"{t.name}: gguf dequantizes to other values than lowbit (first differences at {bad[:5]})")
    print(f"gguf_crosscheck: {path}: {len(fields)} keys and {len(r.tensors)} tensors match (gguf {gguf_version()})")
    read_cpp_blocks(out)


# What GgufCrossCheck.WritesGgmlBlockTypesForGgufPython writes: one (4, 512) tensor per ggml block type.
CPP_BLOCK_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS]


def read_cpp_blocks(out):
    path = os.path.join(out, "cpp_blocks.gguf")
    if not os.path.exists(path):
        fail(f"{path} is missing: GgufCrossCheck.WritesGgmlBlockTypesForGgufPython did not run or failed")
    r = gguf.GGUFReader(path)
    # ggml's names: lower case except the k-quants' capital K ("q4_K").
    names = {"blocks." + (t.name[:-2].lower() + "_K" if t.name.endswith("_K") else t.name.lower()): t
             for t in CPP_BLOCK_TYPES}
    if sorted(t.name for t in r.tensors) != sorted(names):
        fail(f"tensor names {[t.name for t in r.tensors]} != {sorted(names)}")
    for t in r.tensors:
        qtype = names[t.name]
        if t.tensor_type != qtype:
            fail(f"{t.name}: type {t.tensor_type.name}, expected {qtype.name}")
        if list(t.shape) != [512, 4]:
            fail(f"{t.name}: ggml dims {list(t.shape)}, expected [512, 4]")
        got = np.asarray(gguf.quants.dequantize(t.data, qtype), dtype=np.float32).reshape(-1)
        want = np.fromfile(os.path.join(out, t.name + ".f32"), dtype="<f4")
        if got.shape != want.shape or not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
            fail(f"{t.name}: gguf dequantizes lowbit's {qtype.name} blocks to other values than lowbit")
    print(f"gguf_crosscheck: {path}: {len(r.tensors)} ggml block types match")


def gguf_version():
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:  # noqa: BLE001
        return "?"


def main():
    if len(sys.argv) != 2 or "=" not in sys.argv[1]:
        print(__doc__, file=sys.stderr)
        return 2
    mode, _, out = sys.argv[1].partition("=")
    if mode == "write":
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        rng = np.random.default_rng(20240607)
        write_types(out, rng)
        write_llama(out, rng)
        print(f"gguf_crosscheck: wrote py_types.gguf and py_llama.gguf to {out} (gguf {gguf_version()})")
    elif mode == "read":
        read_cpp(out)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

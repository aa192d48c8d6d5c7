#!/usr/bin/env python3
"""Cross-checks lowbit's safetensors reader and writer against the safetensors PyPI package.

    safetensors_crosscheck.py setup DIR    # py.safetensors (save_file) + expected/<name>.bin + manifest.txt
    (gtest SafetensorsCrossCheck.* with LOWBIT_SAFETENSORS_CROSSCHECK_DIR=DIR reads them and
     writes cpp.safetensors, cpp_quant.safetensors and <name>.dequant.bin)
    safetensors_crosscheck.py verify DIR   # safe_open on lowbit's files; values, metadata, and an
                                           # independent numpy dequantization of the quantized layout

CTest runs the three as a fixture (tests/cli/CMakeLists.txt). The expected bytes come from numpy's
tofile, never from the file under test.
"""
import json
import os
import shutil
import sys

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

META = {"format": "np", "source": "safetensors.numpy", "unicode": "ünï €"}
DTYPE_NAMES = {
    np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float64): "F64", np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.int16): "I16",
    np.dtype(np.uint16): "U16", np.dtype(np.int32): "I32", np.dtype(np.uint32): "U32", np.dtype(np.int64): "I64",
}


def setup(d):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "expected"))
    rng = np.random.default_rng(20240601)
    x = rng.standard_normal((3, 5)).astype(np.float32) * 10
    tensors = {
        "f32": x,
        "f16": x.astype(np.float16),
        "bf16": x.astype(ml_dtypes.bfloat16),
        "f64": rng.standard_normal((2, 3, 2)),
        "i8": rng.integers(-128, 128, (7,), dtype=np.int8),
        "u8": rng.integers(0, 256, (4, 3), dtype=np.uint8),
        "i16": rng.integers(-30000, 30000, (5,), dtype=np.int16),
        "u16": rng.integers(0, 65535, (5,), dtype=np.uint16),
        "i32": rng.integers(-2**31, 2**31 - 1, (2, 2), dtype=np.int32),
        "u32": rng.integers(0, 2**32 - 1, (3,), dtype=np.uint32),
        "i64": rng.integers(-2**62, 2**62, (3,), dtype=np.int64),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((4, 8)).astype(np.float16),
    }
    save_file(tensors, os.path.join(d, "py.safetensors"), metadata=META)
    with open(os.path.join(d, "manifest.txt"), "w", encoding="utf-8") as m:
        for name, a in tensors.items():
            a.astype(a.dtype.newbyteorder("<")).tofile(os.path.join(d, "expected", name + ".bin"))
            dims = ",".join(str(s) for s in a.shape) or "-"
            m.write(f"tensor {name} {DTYPE_NAMES[a.dtype]} {dims}\n")
        for k, v in META.items():
            m.write(f"meta {k} {v}\n")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def pattern(n, scale):
    return (np.arange(n) % 13 - 6).astype(np.float64) * scale


def verify(d):
    # Plain tensors: the gtest wrote v[i] = (i % 13 - 6) * scale in each dtype.
    with safe_open(os.path.join(d, "cpp.safetensors"), framework="numpy") as f:
        check(f.metadata() == {"format": "pt", "writer": "lowbit"}, f"metadata {f.metadata()}")
        p = pattern(12, 0.25)
        want = {
            "f32": p.astype(np.float32).reshape(3, 4),
            "f16": p.astype(np.float16),
            "bf16": p.astype(ml_dtypes.bfloat16).reshape(2, 6),
            "f64": pattern(5, 0.125),
            "i8": pattern(7, 1).astype(np.int8),
            "u8": (pattern(7, 1) + 6).astype(np.uint8).reshape(7, 1),
            "i32": pattern(7, 1).astype(np.int32) * 100000,
            "i64": pattern(7, 1).astype(np.int64) * 10000000000,
            "scalar": np.array(p[5], dtype=np.float32),
            "empty": np.zeros((0, 4), dtype=np.float32),
        }
        check(sorted(f.keys()) == sorted(want), f"keys {sorted(f.keys())}")
        for name, w in want.items():
            got = f.get_tensor(name)
            check(got.dtype == w.dtype and got.shape == w.shape, f"{name}: {got.dtype}{got.shape} vs {w.dtype}{w.shape}")
            check(got.tobytes() == w.tobytes(), f"{name}: values differ: {got} vs {w}")

    # Quantized layout, dequantized here from the documented layout alone.
    with safe_open(os.path.join(d, "cpp_quant.safetensors"), framework="numpy") as f:
        cfg = json.loads(f.metadata()["quantization_config"])
        check(cfg["quant_method"] == "lowbit" and cfg["version"] == 1, f"config {cfg}")
        check(cfg["tensors"]["w_sym"] == {"spec": "int4:g32:sym:fp16", "shape": [5, 70]}, f"{cfg['tensors']}")
        check(cfg["tensors"]["w_asym"]["spec"].startswith("uint4:g32:asym:fp16"), f"{cfg['tensors']}")
        check(cfg["tensors"]["w3_sym"]["spec"].startswith("int3:g32:sym:fp16"), f"{cfg['tensors']}")
        check(cfg["tensors"]["w3_asym"]["spec"].startswith("uint3:g32:asym:fp16"), f"{cfg['tensors']}")
        for name, signed, bits in (("w_sym", True, 4), ("w_asym", False, 4), ("w3_sym", True, 3), ("w3_asym", False, 3)):
            rows, cols = cfg["tensors"][name]["shape"]
            q = f.get_tensor(name + ".qweight")
            s = f.get_tensor(name + ".scales")
            check(q.dtype == np.uint8 and q.shape == (rows, (cols * bits + 7) // 8), f"{name}.qweight {q.dtype}{q.shape}")
            check(s.dtype == np.float16 and s.shape == (rows, (cols + 31) // 32), f"{name}.scales {s.dtype}{s.shape}")
            if bits == 4:
                codes = np.empty((rows, q.shape[1] * 2), dtype=np.int32)
                codes[:, 0::2] = q & 0xF  # low nibble first
                codes[:, 1::2] = q >> 4
                codes = codes[:, :cols]
            else:  # a little-endian bit stream per row: bit t of element i is stream bit 3i + t
                stream = np.unpackbits(q, axis=1, bitorder="little")[:, :3 * cols].reshape(rows, cols, 3)
                codes = (stream.astype(np.int32) * np.array([1, 2, 4], dtype=np.int32)).sum(axis=2)
            half = 1 << (bits - 1)
            if signed:
                codes = np.where(codes >= half, codes - 2 * half, codes)
                zeros = np.zeros_like(s, dtype=np.int32)
                check(name + ".zeros" not in f.keys(), f"{name}.zeros present for a symmetric spec")
            else:
                zeros = f.get_tensor(name + ".zeros")
                check(zeros.dtype == np.int32 and zeros.shape == s.shape, f"{name}.zeros {zeros.dtype}{zeros.shape}")
            group = np.arange(cols) // 32
            deq = ((codes.astype(np.float32) - zeros[:, group].astype(np.float32)) * s[:, group].astype(np.float32))
            ref = np.fromfile(os.path.join(d, name + ".dequant.bin"), dtype="<f4").reshape(rows, cols)
            check(np.array_equal(deq, ref), f"{name}: numpy dequantization differs from lowbit's, max "
                                            f"{np.abs(deq - ref).max()}")
    print("safetensors cross-check: OK")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("setup", "verify"):
        print(__doc__, file=sys.stderr)
        return 2
    (setup if sys.argv[1] == "setup" else verify)(sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())

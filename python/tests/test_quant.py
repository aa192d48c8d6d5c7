"""QuantSpec, quantize / dequantize, QuantizedTensor's zero-copy views and their lifetime, observers,
error metrics, matmul through the kernel registry, DLPack out, GIL release and bad input.

The worked examples are the C++ suite's fixtures (tests/quant/quantize_test.cc, QuantizeWorked.*),
computed by hand from docs/schemes.md."""
import gc
import sys
import threading
import time
import weakref

import numpy as np
import pytest

import lowbit

F32 = np.float32


def bits(a):
    return np.asarray(a, F32).view(np.uint32)


# ---- the C++ fixtures ------------------------------------------------------------------------

def test_fixture_int8_per_tensor():
    q = lowbit.quantize(F32([0.5, -1.2, 0.8, -0.3]), "int8:tensor:sym:fp32")
    assert (q.rows, q.cols, q.shape) == (1, 4, (4,))
    assert q.codes.tolist() == [[53, 0x81, 85, 0xE0]]
    assert q.int_codes().tolist() == [[53, -127, 85, -32]]
    s = F32(1.2) / F32(127)
    assert bits(q.scales) == bits([[s]]) and q.scale_codes.tolist() == [[bits(s).item()]]
    assert q.zero_points is None and q.tensor_scale == 1.0
    np.testing.assert_array_equal(bits(lowbit.dequantize(q)), bits([53 * s, -127 * s, 85 * s, -32 * s]))


def test_fixture_int8_per_row():
    x = F32([0.5, -1.2, 0.8, -0.3, 0.9, -0.6]).reshape(2, 3)
    for text in ("int8:row", "int8:channel", "int8:token"):
        q = lowbit.quantize(x, text)
        assert q.int_codes().tolist() == [[53, -127, 85], [-42, 127, -85]]
        np.testing.assert_array_equal(bits(q.scales[:, 0]), bits([F32(1.2) / F32(127), F32(0.9) / F32(127)]))


def test_fixture_int4_groups_of_four():
    q = lowbit.quantize(F32([0.5, -1.2, 0.8, -0.3, 0.9, -0.6, 0.4, -0.7]).reshape(1, 8), "int4:g4:sym:fp32")
    assert q.int_codes().tolist() == [[3, -7, 5, -2, 7, -5, 3, -5]]
    assert q.codes.tolist() == [[0x93, 0xE5, 0xB7, 0xB3]]  # nibbles, low first
    s0, s1 = F32(1.2) / F32(7), F32(0.9) / F32(7)
    want = [3 * s0, -7 * s0, 5 * s0, -2 * s0, 7 * s1, -5 * s1, 3 * s1, -5 * s1]
    np.testing.assert_array_equal(bits(q.dequantize()), bits([want]))


def test_fixture_affine():
    x = F32([-0.5, 0.0, 1.0, 3.0]).reshape(1, 4)
    s = F32(3.5) / F32(255)
    q = lowbit.quantize(x, "uint8:tensor:asym")
    assert q.zero_points.tolist() == [[36]] and q.codes.tolist() == [[0, 36, 109, 255]]
    np.testing.assert_array_equal(bits(q.dequantize()), bits([[-36 * s, 0, 73 * s, 219 * s]]))
    q = lowbit.quantize(x, "int8:tensor:asym")
    assert q.zero_points.tolist() == [[-92]] and q.int_codes().tolist() == [[-128, -92, -19, 127]]


# ---- QuantSpec and schemes ---------------------------------------------------------------------

def test_quantspec_parse_str_fields():
    s = lowbit.QuantSpec("int4:g128:sym:fp16")
    assert str(s) == "int4:g128:sym:fp16" and repr(s) == "QuantSpec('int4:g128:sym:fp16')"
    assert (s.element, s.granularity, s.group, s.symmetric, s.scale_format) == ("int4", "group", 128, True, "fp16")
    assert s.bits_per_weight(4096, 4096) == 4.125 and s.qmax == 7
    assert s == "int4:g128:sym:fp16" and s == lowbit.QuantSpec(str(s)) and hash(s) == hash(lowbit.QuantSpec(str(s)))
    b = lowbit.QuantSpec("e4m3:tile128x128:fp32")
    assert b.granularity == "block" and b.block == (128, 128) and b.grid(300, 256) == (3, 2)
    nv = lowbit.QuantSpec("e2m1:g16:e4m3*fp32")
    assert nv.tensor_scale and nv.scale_format == "e4m3"
    import pickle
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(ValueError, match="quant spec 'int4:g0': group size '0' is not valid"):
        lowbit.QuantSpec("int4:g0")
    with pytest.raises(ValueError):
        lowbit.QuantSpec("int9:tensor")


def test_named_schemes():
    sc = lowbit.schemes()
    assert {"w8a8", "w4a16-g128", "fp8-block", "nf4-g64"} <= set(sc)
    w = sc["w4a16-g128"]
    assert str(w.weights) == "int4:g128:sym:fp16" and w.activations is None
    assert lowbit.scheme("w8a8").activations == lowbit.QuantSpec("int8:token:sym:fp32")
    with pytest.raises(ValueError, match="w4a16-g128"):  # the error lists the known names
        lowbit.scheme("w5")


# ---- views share memory, lifetime ----------------------------------------------------------------

def test_views_share_memory_with_the_tensor():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 64)).astype(F32)
    q = lowbit.quantize(x, "int8:g32:asym:fp16")
    codes, scales, zeros = q.codes, q.scales, q.zero_points
    assert np.shares_memory(codes, q.codes) and np.shares_memory(scales, q.scales)
    assert codes.flags.writeable and zeros.shape == (16, 2)
    before = lowbit.dequantize(q)
    codes[3, 5] = (int(codes[3, 5]) + 1) % 256           # what dequantize reads is the view's memory
    after = q.dequantize()
    diff = np.flatnonzero(after != before)
    assert diff.tolist() == [3 * 64 + 5]
    assert np.isclose(after[3, 5] - before[3, 5], scales[3, 0], rtol=1e-6) or codes[3, 5] == 0
    scales[0, 1] *= 2                                      # the block's scale doubles its values
    np.testing.assert_allclose(q.dequantize()[0, 32:], 2 * after[0, 32:], rtol=1e-6)
    zeros[1, 0] += 1
    np.testing.assert_allclose(q.dequantize()[1, :32], after[1, :32] - scales[1, 0], rtol=1e-5, atol=1e-6)


def test_views_keep_the_tensor_alive():
    x = np.linspace(-1, 1, 512, dtype=F32).reshape(8, 64)
    q = lowbit.quantize(x, "int4:g32:sym:fp16")
    ref = weakref.ref(q)
    codes, scales = q.codes, q.scales
    want_codes, want_scales = codes.copy(), scales.copy()
    del q
    gc.collect()
    assert ref() is not None                        # the views hold the owner
    junk = [np.full(4096, 7, np.uint8) for _ in range(64)]  # reuse freed memory if there were any
    assert np.array_equal(codes, want_codes) and np.array_equal(scales, want_scales)
    del codes
    gc.collect()
    assert ref() is not None
    del scales, junk
    gc.collect()
    assert ref() is None                            # and only they: no leak once they are gone


def test_dlpack_out_shares_memory_and_lifetime():
    q = lowbit.quantize(np.ones((4, 64), F32), "int8:row")
    t = np.from_dlpack(q.scales)                    # what torch.from_dlpack does, zero copy
    assert np.shares_memory(t, q.scales) and hasattr(q.codes, "__dlpack__")
    ref = weakref.ref(q)
    del q
    gc.collect()
    assert ref() is not None and t.tolist() == [[1 / 127]] * 4 or np.allclose(t, 1 / 127)
    del t
    gc.collect()
    assert ref() is None


# ---- strides, dequantize into, input kinds ---------------------------------------------------------

def test_strided_inputs_equal_contiguous():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((40, 96)).astype(F32)
    for view in (base[::2, ::3], base.T, base[::-1], base[5:30, 7:71]):
        a = lowbit.quantize(view, "int4:g16:asym:fp16")
        b = lowbit.quantize(np.ascontiguousarray(view), "int4:g16:asym:fp16")
        assert np.array_equal(a.codes, b.codes) and np.array_equal(a.scales, b.scales)
    out = np.zeros((96, 40), F32).T                 # dequantize into a strided array
    q = lowbit.quantize(base, "int8:row")
    assert lowbit.dequantize(q, out=out) is out
    np.testing.assert_array_equal(out, q.dequantize())
    mv = memoryview(bytearray(base.tobytes())).cast("f", (40, 96))  # buffer protocol, not numpy
    assert np.array_equal(lowbit.quantize(mv, "int8:row").codes, q.codes)


def test_3d_and_4d_shapes():
    x = np.arange(2 * 3 * 4 * 8, dtype=F32).reshape(2, 3, 4, 8) / 100
    q = lowbit.quantize(x, "int8:row")
    assert q.shape == (2, 3, 4, 8) and (q.rows, q.cols) == (24, 8)
    assert q.dequantize().shape == x.shape
    with pytest.raises(ValueError, match="5 dimensions; lowbit takes at most 4"):
        lowbit.quantize(x[None], "int8:row")


# ---- metrics and observers -------------------------------------------------------------------------

def test_error_stats_against_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(4096).astype(F32)
    y = lowbit.dequantize(lowbit.quantize(x, "int4:g32"))
    e = lowbit.error_stats(x, y)
    d = x.astype(np.float64) - y
    assert np.isclose(e["mse"], np.mean(d * d), rtol=1e-12)
    assert np.isclose(e["sqnr_db"], 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum(d * d)), rtol=1e-12)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    assert np.isclose(e["cosine"], np.dot(x64, y64) / np.linalg.norm(x64) / np.linalg.norm(y64), rtol=1e-9)
    assert e["max_abs"] == np.max(np.abs(d))


def test_observers_give_static_scales():
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((8, 32)).astype(F32) for _ in range(3)]
    obs = lowbit.AbsMaxObserver("int8:tensor", "acts")
    for b in batches:
        obs.observe(b)
    clip = obs.clip()
    assert obs.num_observed == 3 and clip.shape == (1, 1)
    assert clip[0, 0] == max(np.abs(b).max() for b in batches)
    q = lowbit.quantize(batches[0], "int8:tensor", clip=clip)
    np.testing.assert_allclose(q.scales[0, 0], clip[0, 0] / 127, rtol=1e-7)
    p = lowbit.PercentileObserver("int8:tensor", 50.0)
    p.observe(batches[0])
    assert p.clip()[0, 0] == np.sort(np.abs(batches[0]).ravel())[int(np.ceil(0.5 * 256)) - 1]
    m = lowbit.MseObserver("int4:g16")
    m.observe(batches[0])
    assert m.clip().shape == (8, 2) and (m.clip() <= np.abs(batches[0]).reshape(8, 2, 16).max(-1) + 1e-7).all()
    dyn = lowbit.dynamic_clip(batches[0], "int4:g16")
    np.testing.assert_array_equal(dyn, np.abs(batches[0]).reshape(8, 2, 16).max(-1))
    h = lowbit.AmaxHistory(2, 0, 448.0)
    for a in (1.0, 4.0, 2.0):
        h.record(a)
    assert h.history == [4.0, 2.0] and h.scale() == F32(4.0) / F32(448)
    with pytest.raises(ValueError, match="acts"):
        obs.observe(np.full((8, 32), np.nan, F32))


# ---- kernels ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,op,prefix", [("int4:g32:sym:fp16", "auto", "gemm_a16_w4g32_f32"),
                                            ("int8:row", "gemm_a8_w8", "gemm_a8_w8"),
                                            ("nf4:g64", "auto", "gemm_a16_nf4g64_f32")])
def test_matmul_through_the_registry(spec, op, prefix):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((33, 128)).astype(F32)
    x = rng.standard_normal((7, 256)).astype(F32)[:, ::2]   # rows with a padded stride, read in place
    q = lowbit.quantize(w, spec)
    if op == "gemm_a8_w8" and not lowbit.kernel_supports(spec):
        pytest.skip("no int8 kernel")
    y, name = lowbit.matmul(x, q, op=op, return_kernel=True)
    assert name.startswith(prefix) and name.endswith("__" + lowbit.active_isa() if lowbit.active_isa() == "scalar"
                                                          else name.split("__")[1]), name
    assert name in {k["name"] for k in lowbit.kernels()} or name.split("__")[0] in {
        k["name"].split("__")[0] for k in lowbit.kernels()}
    ref = x.astype(np.float64) @ q.dequantize().astype(np.float64).T
    tol = 0.05 if op == "gemm_a8_w8" else 1e-4          # int8 activations are quantized per token
    assert np.abs(y - ref).max() <= tol * np.abs(ref).max()
    p = lowbit.pack_weights(q)
    assert (p.n, p.k) == (33, 128) and p.kernel_name(op) == name
    np.testing.assert_array_equal(lowbit.matmul(np.ascontiguousarray(x), p, op=op), y)
    np.testing.assert_array_equal(lowbit.matmul(x[2], p, op=op), lowbit.matmul(x[2:3], p, op=op)[0])


def test_matmul_errors():
    q = lowbit.quantize(np.ones((8, 64), F32), "int4:g32")
    with pytest.raises(ValueError, match="x has 32 columns but the weights are \\(out 8, in 64\\)"):
        lowbit.matmul(np.ones((2, 32), F32), q)
    with pytest.raises(ValueError, match="gemm_fp8_block expects"):
        lowbit.matmul(np.ones((2, 64), F32), q, op="gemm_fp8_block")
    with pytest.raises(ValueError, match="not a kernel op"):
        lowbit.matmul(np.ones((2, 64), F32), q, op="gemm_magic")
    with pytest.raises(ValueError):
        lowbit.pack_weights(lowbit.quantize(np.ones((8, 64), F32), "int4:g3"))


# ---- GIL and bad input -----------------------------------------------------------------------------

def test_long_calls_release_the_gil():
    x = np.random.default_rng(5).standard_normal((2048, 2048)).astype(F32)
    done = threading.Event()
    spins = [0]

    def work():
        for _ in range(3):
            lowbit.dequantize(lowbit.quantize(x, "int4:g32:asym:fp16"))
        done.set()

    t = threading.Thread(target=work)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        t.start()
        while not done.is_set():  # runs only while the worker is inside lowbit without the GIL
            spins[0] += 1
            time.sleep(0)
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert spins[0] > 50, spins


def test_bad_input():
    x = np.ones((4, 8), F32)
    with pytest.raises(ValueError, match="quantize: x: expected dtype float32, got float64"):
        lowbit.quantize(x.astype(np.float64), "int8:row")
    with pytest.raises(ValueError, match="quantize: x: expected dtype float32, got int64"):
        lowbit.quantize(np.int64([[1, 2]]), "int8:row")
    with pytest.raises(ValueError, match="expected a QuantSpec or its text form"):
        lowbit.quantize(x, 8)
    with pytest.raises(ValueError, match="'int4:g7x'|granularity"):
        lowbit.quantize(x, "int4:g7x")
    y = x.copy()
    y[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"w\.0.*NaN|NaN.*w\.0|w\.0"):
        lowbit.quantize(y, "int8:row", name="w.0")
    q = lowbit.quantize(x, "int8:row")
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros((4, 8), F32)
        ro.setflags(write=False)
        lowbit.dequantize(q, out=ro)
    with pytest.raises(ValueError):
        lowbit.dequantize(q, out=np.zeros((4, 9), F32))
    with pytest.raises(ValueError, match="clip"):
        lowbit.quantize(x, "int8:tensor", clip=np.ones(3, F32))

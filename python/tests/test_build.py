"""The module under test is the one this preset built, with the interpreter the tests use; in the asan
preset it must be the sanitized build, with ASan really active in this process."""
import os
import subprocess
import sys

import numpy as np

import lowbit
from conftest import ROOT


def test_module_comes_from_this_build_tree():
    path = os.path.realpath(lowbit._core.__file__)
    assert path.startswith(os.path.join(ROOT, "build")), path
    assert lowbit.__version__ and os.path.exists(os.path.join(os.path.dirname(lowbit.__file__), "__init__.pyi"))
    assert lowbit.active_isa() in lowbit.supported_isas()


def test_asan_build_is_instrumented():
    if os.environ.get("LOWBIT_EXPECT_ASAN") != "1":
        assert not lowbit._core._built_with_asan
        return
    assert lowbit._core._built_with_asan
    # A heap overflow inside the extension must be caught: numpy hands quantize a view whose strides walk
    # past the end of its buffer (as_strided does no checks), which ASan reports and aborts on.
    code = ("import numpy as np, lowbit\n"
            "a = np.zeros(8, np.float32)\n"
            "v = np.lib.stride_tricks.as_strided(a, shape=(4, 8), strides=(32, 4))\n"
            "lowbit.quantize(v, 'int8:row')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert p.returncode != 0 and "AddressSanitizer" in p.stderr and "heap-buffer-overflow" in p.stderr, p.stderr[-2000:]


def test_isa_can_be_forced():
    before = lowbit.active_isa()
    x = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    q = lowbit.quantize(x, "int4:g32")
    y_fast = lowbit.matmul(x, q)
    lowbit.set_isa("scalar")
    try:
        y_ref, name = lowbit.matmul(x, q, return_kernel=True)
        assert name.endswith("__scalar"), name
    finally:
        lowbit.set_isa(before)
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-5, atol=1e-5)

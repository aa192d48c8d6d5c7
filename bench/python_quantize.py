#!/usr/bin/env python3
"""lowbit.quantize from Python against the same C++ call, measured side by side in one process.

Usage: PYTHONPATH=build/release/python .venv/bin/python bench/python_quantize.py [--reps N] [--rounds R]

For each spec, a 4096 x 4096 float32 array is quantized R rounds of N calls, alternating a round
timed inside C++ (lowbit._core._time_quantize: the C++ quantize() in a C++ loop, no Python between
calls) and a round of lowbit.quantize calls timed from Python (argument conversion, GIL release,
moving the result into a Python object). In both loops the previous result is freed outside the
timed region. Prints the median per call of each and the ratio; the goal is Python within 10%.
"""
import argparse
import statistics
import time

import numpy as np

import lowbit
from lowbit import _core

SPECS = ["int4:g128:sym:fp16", "int8:row", "e4m3:block128x128:fp32", "nf4:g64"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--n", type=int, default=4096)
    a = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((a.n, a.n)).astype(np.float32)
    print(f"lowbit.quantize vs the C++ call, {a.n}x{a.n} float32, {lowbit.num_threads()} threads, "
          f"ISA {lowbit.active_isa()}, median of {a.rounds} x {a.reps} calls each (alternating rounds)\n")
    print("| spec | C++ quantize() ms | lowbit.quantize ms | Python / C++ |")
    print("|---|---:|---:|---:|")
    for spec in SPECS:
        lowbit.quantize(x, spec)  # warm up: pages, thread pool
        cpp, py = [], []
        for _ in range(a.rounds):
            cpp += _core._time_quantize(x, spec, a.reps)
            for _ in range(a.reps):
                q = None  # the previous result is freed outside the timing, as in the C++ loop
                t0 = time.perf_counter()
                q = lowbit.quantize(x, spec)
                py.append(time.perf_counter() - t0)
            q = None
        c, p = statistics.median(cpp), statistics.median(py)
        print(f"| {spec} | {c * 1e3:.2f} | {p * 1e3:.2f} | {p / c:.3f} |")


if __name__ == "__main__":
    main()

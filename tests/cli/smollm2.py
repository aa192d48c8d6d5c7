"""Where the tests find SmolLM2-135M-Instruct.Q4_1.gguf (issue 8): ../shared/models/ when it is
there, else the copy scripts/setup extracts into .cache/models/. Twin of tests/model/smollm2.h.
Without either, model_path() ends the test as a failure (exit 1) that says to run scripts/setup."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path():
    for p in (os.path.join(ROOT, "..", "shared", "models", FILE), os.path.join(ROOT, ".cache", "models", FILE)):
        if os.path.exists(p):
            return p
    print(f"FAIL: {FILE} not found in ../shared/models/ or .cache/models/: run scripts/setup", file=sys.stderr)
    sys.exit(1)

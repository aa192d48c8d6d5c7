"""Shared fixtures for the lowbit Python tests.

ctest runs each file with PYTHONPATH=build/<preset>/python (the module of that preset) and
LOWBIT_CLI=build/<preset>/lowbit (the CLI the figures are compared with). Tests that need the
bundled model skip when ../shared is absent, as the C++ tests do.
"""
import os
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.path.abspath(os.path.join(ROOT, "..", "shared"))
MODEL = os.path.join(SHARED, "models", "stories260K.bin")
TEXT = os.path.join(SHARED, "data", "tinystories_val.txt")


@pytest.fixture(scope="session")
def cli():
    path = os.environ.get("LOWBIT_CLI") or os.path.join(ROOT, "build", "release", "lowbit")
    if not os.access(path, os.X_OK):
        pytest.fail(f"LOWBIT_CLI={path} is not an executable (build the lowbit target)")
    return path


def run_cli(cli, *args, check=True):
    env = dict(os.environ, LOWBIT_NO_PROGRESS="1")
    env.pop("LD_PRELOAD", None)  # the CLI links its sanitizer runtime itself
    p = subprocess.run([cli, *map(str, args)], capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"lowbit {' '.join(map(str, args))} exited {p.returncode}: {p.stderr.strip()}")
    return p


@pytest.fixture(scope="session")
def model_path():
    if not os.path.exists(MODEL):
        pytest.skip(f"{MODEL} is missing (../shared holds the bundled model)")
    return MODEL


@pytest.fixture(scope="session")
def small_text(tmp_path_factory):
    """The first 150 TinyStories stories: enough windows and calibration tokens, quick under ASan."""
    if not os.path.exists(TEXT):
        pytest.skip(f"{TEXT} is missing (../shared holds the bundled text)")
    with open(TEXT, encoding="utf-8") as f:
        stories = f.read().split("\n\n")
    path = tmp_path_factory.mktemp("text") / "stories.txt"
    path.write_text("\n\n".join(stories[:150]) + "\n", encoding="utf-8")
    return str(path)

"""What every CLI test script shares: run the binary given as argv[1], record failed checks,
check the bad-input contract (exit 2, one 'lowbit: ' line naming what is wrong, no stdout, no
output file), and finish with the exit status CTest reads."""
import os
import subprocess
import sys

LOWBIT = sys.argv[1]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared")
failures = []
# An ASan/UBSan build: its peak RSS is the sanitizer's shadow memory and quarantine (freed memory is
# held back on purpose), so memory bounds are not lowbit's there.
with open(LOWBIT, "rb") as _f:
    SANITIZED = b"__asan_init" in _f.read()


def run(*args, env=None, timeout=900):
    e = dict(os.environ, LOWBIT_NO_PROGRESS="1")
    if env:
        e.update(env)
    return subprocess.run([LOWBIT, *args], capture_output=True, text=True, env=e, timeout=timeout)


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def bad_input(args, must_name, what, out=None, empty_stdout=True):
    p = run(*args)
    lines = p.stderr.strip().splitlines()
    check(p.returncode == 2, f"{what}: exit {p.returncode}, expected 2 (stderr: {p.stderr.strip()!r})")
    check(len(lines) == 1 and lines[0].startswith("lowbit: "), f"{what}: stderr is not one 'lowbit: ' line: {p.stderr!r}")
    if empty_stdout:
        check(p.stdout == "", f"{what}: stdout not empty: {p.stdout[:200]!r}")
    check(must_name in p.stderr, f"{what}: message does not name {must_name!r}: {p.stderr.strip()!r}")
    if out:
        check(not os.path.exists(out), f"{what}: left {out} behind")


def finish(ok_message="ok"):
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print(ok_message)
    sys.exit(0)

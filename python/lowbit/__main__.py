"""`python -m lowbit ARGS` runs the `lowbit` command with ARGS (the CLI, not a second copy of it).

The executable is looked up beside the package (pip install puts it in lowbit/bin/), then in the
build tree the package was built into (build/<preset>/lowbit), then on PATH.
"""
import os
import shutil
import sys


def _find_cli() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, "bin", "lowbit"), os.path.join(here, "..", "..", "lowbit")):
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return os.path.normpath(cand)
    found = shutil.which("lowbit")
    if found:
        return found
    sys.exit("lowbit: the lowbit executable was not found beside the package, in its build tree or on PATH")


def main() -> None:
    cli = _find_cli()
    os.execv(cli, [cli] + sys.argv[1:])


if __name__ == "__main__":
    main()

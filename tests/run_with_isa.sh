#!/usr/bin/env bash
# Runs a test binary with LOWBIT_ISA=$1 forced through the environment.
# Usage: run_with_isa.sh ISA CLI BIN [gtest args...]. Skips (77) when the CPU lacks ISA.
set -u
isa=$1 cli=$2 bin=$3
shift 3
if ! "$cli" cpu --supports "$isa" >/dev/null 2>&1; then
  echo "SKIP: this CPU does not support ISA '$isa' (lowbit cpu --supports $isa)"
  exit 77
fi
LOWBIT_ISA=$isa exec "$bin" "$@"

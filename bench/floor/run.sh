#!/usr/bin/env bash
# The CPU floor of a supervisor process per run (bench/README.md, "What the miss is
# made of"): /bin/true alone, through a minimal static supervisor started by
# posix_spawn, and through the same supervisor forked by a pre-started server.
# Usage: bash bench/floor/run.sh [RUNS] [SCRATCH]   (needs musl-gcc, else cc -static)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${1:-3000}
scratch=$(mktemp -d "${2:-/var/tmp}/floor-XXXXXX")
build=$(mktemp -d)
trap 'rm -rf "$scratch" "$build"' EXIT
cc=$(command -v musl-gcc || command -v cc)
"$cc" -O2 -static -o "$build/sup" "$here/sup.c"
cc -O2 -o "$build/drv" "$here/drv.c"
for _ in 1 2 3; do
    for mode in true spawn zygote; do
        "$build/drv" "$mode" "$runs" "$build/sup" "$scratch"
    done
done

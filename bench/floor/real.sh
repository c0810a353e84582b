#!/usr/bin/env bash
# The CPU of tether's real supervisor per run, two versions side by side (bench/README.md,
# "What the miss is made of"): builds src/tether/_supervisor/supervise.c as of commit A
# and as of B (a commit; a .patch file, applied to A's; default: the work tree), then
# alternates them, three rounds of
# RUNS sequential runs each, in run folders under SCRATCH (use /dev/shm: on ext4 each
# round measures the slow inodes that the previous round's deletion left).
# Usage: bash bench/floor/real.sh [A] [B|PATCH|-] [RUNS] [SCRATCH]   (needs musl-gcc, else cc -static)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
a=${1:-HEAD}
b=${2:--}
runs=${3:-2000}
scratch=$(mktemp -d "${4:-/dev/shm}/floor-real-XXXXXX")
build=$(mktemp -d)
trap 'rm -rf "$scratch" "$build"' EXIT
cc=$(command -v musl-gcc || command -v cc)
file=src/tether/_supervisor/supervise.c
source_of() {  # COMMIT|- -> the supervisor's source at that commit, or in the work tree
    if [ "$1" = - ]; then cat "$root/$file"; else git -C "$root" show "$1:$file"; fi
}
source_of "$a" > "$build/a.c"
case "$b" in
    *.patch)  # A's source with the patch's changes to it
        mkdir -p "$build/tree/$(dirname "$file")"
        cp "$build/a.c" "$build/tree/$file"
        patch=$(cd "$(dirname "$b")" && pwd)/$(basename "$b")
        (cd "$build/tree" && git apply --include="$file" "$patch")
        cp "$build/tree/$file" "$build/b.c" ;;
    *) source_of "$b" > "$build/b.c" ;;
esac
"$cc" -O2 -static -o "$build/A" "$build/a.c"
"$cc" -O2 -static -o "$build/B" "$build/b.c"
cc -O2 -o "$build/real" "$here/real.c"
for _ in 1 2 3; do
    for which in A B; do
        "$build/real" "$build/$which" "$runs" "$(mktemp -d "$scratch/$which-XXXX")" "$which"
    done
done

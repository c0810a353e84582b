#!/usr/bin/env bash
# Make Debian's headless Chromium available for the dashboard's browser tests
# (tests/test_ui.py drives it through Playwright, pointed at the system browser:
# `playwright install` cannot download browsers here). Idempotent: a second run finds
# the browser installed and working, and only checks it. Needs root (apt-get).
# Exit status is non-zero, with the reason, when the browser cannot render a page.
set -euo pipefail

say() { echo "chromium: $*" >&2; }

BROWSER=${TETHER_CHROMIUM:-/usr/bin/chromium}

if [ ! -x "$BROWSER" ]; then
    say "installing chromium with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi

if [ ! -x "$BROWSER" ]; then
    say "$BROWSER is missing after apt-get install chromium"
    exit 1
fi

# Root needs --no-sandbox; a fresh profile keeps this check away from any other run's.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
if ! dom=$(timeout 60 "$BROWSER" --headless --no-sandbox --disable-gpu \
        --user-data-dir="$profile" --dump-dom about:blank 2>"$profile/stderr"); then
    say "$BROWSER --headless --dump-dom about:blank failed; its last lines:"
    tail -n 20 "$profile/stderr" >&2 || true
    exit 1
fi
case "$dom" in
    *"<html"*) ;;
    *) say "$BROWSER --headless printed no page for about:blank: $dom"; exit 1 ;;
esac
say "$("$BROWSER" --version 2>/dev/null | head -n 1) renders pages headless"

#!/usr/bin/env bash
# console-test.sh: browser tests of the operator console (docs/console.md).
#
#   scripts/console-test.sh [PYTEST-ARGS...]
#
# Installs what is missing (Debian's chromium and a font; Playwright for
# Python and pytest from PyPI; never `playwright install`: no browser is
# downloaded, Playwright drives /usr/bin/chromium), builds the debug binaries
# and plugins, then runs server/tests/console/test_console.py: a real
# BasicAgentServer with a token file, 1 000 simulated agents (BasicAgentSwarm)
# and one real BasicAgent on loopback, driven through headless Chromium.
# Screenshots of each page go to target/console-screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[console-test] %s\n' "$*" >&2; }

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
if ! python3 -c 'import playwright, pytest' 2>/dev/null; then
    log "installing playwright and pytest (pip)"
    python3 -m pip install -q playwright pytest >&2 ||
        python3 -m pip install -q --break-system-packages playwright pytest >&2
fi

log "building the workspace (debug: server, swarm, agent, plugins)"
cargo build --workspace >&2

export PYTHONDONTWRITEBYTECODE=1
export CHROMIUM=${CHROMIUM:-$(command -v chromium)}
mkdir -p target/console-screenshots
exec python3 -m pytest -q -p no:cacheprovider server/tests/console/test_console.py "$@"

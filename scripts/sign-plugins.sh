#!/usr/bin/env bash
# sign-plugins.sh: sign every plugin in a directory with a BasicAgent key.
#
#   scripts/sign-plugins.sh KEY DIR [CTL]
#
# Writes DIR/lib*_*.so.sig beside each plugin (BasicAgentCtl plugin sign;
# formats in docs/plugins.md, "Signed plugins"), then verifies them with
# KEY.pub if it exists. CTL is the BasicAgentCtl to use (default: the one
# beside this script's target/release, else BasicAgentCtl on PATH).
# package.sh calls it when BASICAGENT_SIGNING_KEY is set.
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
KEY=$1
DIR=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CTL=${3:-}
if [ -z "$CTL" ]; then
    if [ -x "$ROOT/target/release/BasicAgentCtl" ]; then
        CTL=$ROOT/target/release/BasicAgentCtl
    else
        CTL=$(command -v BasicAgentCtl) || { echo "sign-plugins.sh: BasicAgentCtl not found" >&2; exit 1; }
    fi
fi
[ -f "$KEY" ] || { echo "sign-plugins.sh: key $KEY not found" >&2; exit 1; }
shopt -s nullglob
plugins=("$DIR"/lib*_*.so)
[ ${#plugins[@]} -gt 0 ] || { echo "sign-plugins.sh: no plugins in $DIR" >&2; exit 1; }
"$CTL" plugin sign "$KEY" "${plugins[@]}"
if [ -f "$KEY.pub" ]; then
    "$CTL" plugin verify --key "$KEY.pub" "${plugins[@]}"
fi

#!/usr/bin/env bash
# A throwaway control-plane cluster on loopback, for the demo, the tests and
# the bench: one nats-server (scripts/nats.sh), one PostgreSQL
# (scripts/pg.sh, run as the `postgres` user) and N BasicAgentServer nodes
# in cluster mode, node i listening for agents on $BASE.$((100+i)):8443 and
# for the API on $BASE.$((100+i)):8080.
#
#   scripts/cluster.sh up [--nodes N] [--dir DIR]   start (N defaults to 3)
#   scripts/cluster.sh status [--dir DIR]           prints the state dir, the
#                                                   nodes and GET /v1/nodes
#   scripts/cluster.sh down [--dir DIR]             stop everything, remove DIR
#   scripts/cluster.sh kill NODE [--dir DIR]        SIGKILL one node (tests)
#   scripts/cluster.sh start NODE [--dir DIR]       start a stopped node again
#
# State lives in a temp dir (DIR, default a fresh mktemp -d; `up` records
# it in /tmp/basicagent-cluster-$UID.current, so status/down find it):
# certs/ (scripts/make-certs.sh), nats/, pg/, nodeI/{log,pid,admin.sock},
# nodes (one "NAME LISTEN API PID" line each), db_url, nats_url (without
# credentials; nats/url_auth has them: nats-server runs with NATS_AUTH=1,
# only the nodes' user may connect).
# Environment: BIN (the server binary, default target/debug/BasicAgentServer),
# BASE (default 127.0.0; must be loopback), PORT (8443), API_PORT (8080).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=${BIN:-$root/target/debug/BasicAgentServer}
BASE=${BASE:-127.0.0}
PORT=${PORT:-8443}
API_PORT=${API_PORT:-8080}
current=/tmp/basicagent-cluster-$(id -u).current

die() { echo "cluster.sh: $*" >&2; exit 1; }

case "$BASE" in 127.*) ;; *) die "BASE must be in 127.0.0.0/8, not $BASE" ;; esac

cmd=${1:-}; shift || true
nodes=3
dir=""
node=""
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) nodes=${2:?--nodes N}; shift 2 ;;
        --dir) dir=${2:?--dir DIR}; shift 2 ;;
        -*) die "unknown option $1" ;;
        *) node=$1; shift ;;
    esac
done
[[ "$nodes" =~ ^[0-9]+$ ]] && [ "$nodes" -ge 1 ] && [ "$nodes" -le 50 ] || die "--nodes must be 1..50"

find_dir() {
    if [ -z "$dir" ]; then
        [ -f "$current" ] || die "no cluster is up (no $current); give --dir DIR"
        dir=$(cat "$current")
    fi
    [ -d "$dir" ] || die "$dir is not a cluster directory"
}

start_node() {   # start_node I
    local i=$1 ip=$BASE.$((100 + $1))
    local d=$dir/node$i
    mkdir -p "$d"
    setsid "$BIN" serve --listen "$ip:$PORT" --api "$ip:$API_PORT" \
        --cert "$dir/certs/server.pem" --key "$dir/certs/server.key" \
        --admin "$d/admin.sock" --events "$d/events.jsonl" \
        --nats "@$dir/nats/url_auth" --db "@$dir/db_url" \
        --node-name "node$i" --peer-addr "$ip:$PORT" \
        </dev/null >>"$d/log" 2>&1 &
    echo $! >"$d/pid"
    for _ in $(seq 1 200); do
        if grep -q '"event":"listening"' "$d/events.jsonl" 2>/dev/null; then
            return 0
        fi
        kill -0 "$(cat "$d/pid")" 2>/dev/null || { tail -5 "$d/log" >&2; die "node$i exited"; }
        sleep 0.05
    done
    tail -5 "$d/log" >&2
    die "node$i did not start"
}

up() {
    [ -x "$BIN" ] || die "$BIN missing (cargo build -p basicagent-server)"
    if [ -z "$dir" ]; then
        dir=$(mktemp -d /tmp/basicagent-cluster.XXXXXX)
    else
        mkdir -p "$dir"
    fi
    dir=$(realpath "$dir")
    chmod 0711 "$dir"   # pg.sh's postgres user must reach pg/ inside
    echo "$dir" >"$current"
    "$here/make-certs.sh" "$dir/certs" >/dev/null 2>&1 || die "make-certs.sh failed"
    # The nodes' own NATS account (nobody else may connect, so nobody else
    # publishes on ba.>); the nodes read both URLs, passwords included,
    # from their files (--nats @FILE, --db @FILE), not from a command line.
    NATS_AUTH=1 "$here/nats.sh" start "$dir/nats" >"$dir/nats_url"
    "$here/pg.sh" start "$dir/pg" >"$dir/db_url"
    chmod 600 "$dir/db_url"
    : >"$dir/nodes"
    for i in $(seq 1 "$nodes"); do
        start_node "$i"
        echo "node$i $BASE.$((100 + i)):$PORT $BASE.$((100 + i)):$API_PORT $(cat "$dir/node$i/pid")" >>"$dir/nodes"
    done
    echo "$dir"
}

status() {
    find_dir
    echo "dir $dir"
    echo "nats $(cat "$dir/nats_url" 2>/dev/null)"
    if "$here/pg.sh" status "$dir/pg"; then echo "postgres up"; else echo "postgres down"; fi
    local first_api=""
    while read -r name listen api pid; do
        local pidnow
        pidnow=$(cat "$dir/$name/pid" 2>/dev/null || echo "$pid")
        if kill -0 "$pidnow" 2>/dev/null; then
            echo "$name listen $listen api $api pid $pidnow up"
            [ -n "$first_api" ] || first_api=$api
        else
            echo "$name listen $listen api $api down"
        fi
    done <"$dir/nodes"
    if [ -n "$first_api" ]; then
        echo "GET http://$first_api/v1/nodes:"
        curl -s --max-time 5 "http://$first_api/v1/nodes" || true
        echo
    fi
}

down() {
    find_dir
    if [ -f "$dir/nodes" ]; then
        while read -r name _ _ _; do
            local pid
            pid=$(cat "$dir/$name/pid" 2>/dev/null || true)
            [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
        done <"$dir/nodes"
        sleep 0.5
        while read -r name _ _ _; do
            local pid
            pid=$(cat "$dir/$name/pid" 2>/dev/null || true)
            [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
        done <"$dir/nodes"
    fi
    "$here/nats.sh" stop "$dir/nats" || true
    "$here/pg.sh" stop "$dir/pg" || true
    rm -rf "$dir"
    if [ -f "$current" ] && [ "$(cat "$current")" = "$dir" ]; then rm -f "$current"; fi
}

case "$cmd" in
    up) up ;;
    status) status ;;
    down) down ;;
    kill)
        find_dir
        [ -n "$node" ] || die "kill NODE"
        kill -9 "$(cat "$dir/$node/pid")" ;;
    start)
        find_dir
        [[ "$node" =~ ^node([0-9]+)$ ]] || die "start nodeI"
        start_node "${BASH_REMATCH[1]}" ;;
    *) die "usage: $0 up [--nodes N] [--dir DIR] | status | down | kill NODE | start NODE" ;;
esac

#!/usr/bin/env bash
# A throwaway nats-server (core NATS, no JetStream) for tests, the demo and
# the bench: loopback only, in a directory of its own.
#
#   scripts/nats.sh start [DIR]   start it (installs Debian's nats-server if
#                                 missing); prints its URL. Started again in
#                                 the same DIR it reuses the same port, so a
#                                 test can kill it and bring it back.
#   scripts/nats.sh stop [DIR]    stop it (SIGTERM, then SIGKILL)
#   scripts/nats.sh url [DIR]     print its URL (nats://127.0.0.1:PORT)
#
# DIR defaults to $NATS_DIR, else ${TMPDIR:-/tmp}/basicagent-nats. It holds
# pid, port, url and nats.log. NATS_ADDR (default 127.0.0.1) picks the
# loopback address to bind.
#
# NATS_AUTH=1: the server admits only the cluster's nodes: one user
# `basicagent` with a random password (nats.conf, 0600), no anonymous
# clients, so nobody else can publish on ba.> (or anything). DIR/url stays
# without credentials; DIR/url_auth (0600) is the URL with them, for
# `BasicAgentServer serve --nats @DIR/url_auth` (read from the file, never
# on a command line). A DIR started so keeps the account when started again.
set -euo pipefail

cmd=${1:-}
dir=${2:-${NATS_DIR:-${TMPDIR:-/tmp}/basicagent-nats}}
addr=${NATS_ADDR:-127.0.0.1}

case "$addr" in
    127.*|localhost|::1) ;;
    *) echo "nats.sh: NATS_ADDR must be a loopback address, not $addr" >&2; exit 2 ;;
esac

running() {
    [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null
}

ensure_installed() {
    command -v nats-server >/dev/null 2>&1 && return
    [ -x /usr/sbin/nats-server ] && { PATH=$PATH:/usr/sbin; return; }
    # Tests start servers in parallel: one installs, the others wait.
    (
        flock 9
        [ -x /usr/sbin/nats-server ] && exit 0
        echo "nats.sh: installing nats-server (Debian package)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends nats-server >&2 ||
            { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends nats-server >&2; }
    ) 9>"${TMPDIR:-/tmp}/basicagent-nats-install.lock"
    PATH=$PATH:/usr/sbin
}

free_port() {
    python3 -c 'import socket,sys
s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$addr"
}

case "$cmd" in
start)
    ensure_installed
    mkdir -p "$dir"
    if running; then
        cat "$dir/url"
        exit 0
    fi
    [ -s "$dir/port" ] || free_port >"$dir/port"
    port=$(cat "$dir/port")
    rm -f "$dir/pid"
    [ -f "$dir/nats.log" ] && mv -f "$dir/nats.log" "$dir/nats.log.1"
    conf=()
    # A DIR set up with NATS_AUTH=1 keeps its account on every restart.
    if [ "${NATS_AUTH:-0}" = 1 ] || [ -s "$dir/nats.conf" ]; then
        if [ ! -s "$dir/nats.conf" ]; then
            pass=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
            (umask 077
             printf 'authorization {\n  users = [\n    { user: "basicagent", password: "%s",\n      permissions: { publish: { allow: [">"] }, subscribe: { allow: [">"] } } }\n  ]\n}\n' "$pass" >"$dir/nats.conf"
             echo "nats://basicagent:$pass@$addr:$port" >"$dir/url_auth")
        fi
        conf=(-c "$dir/nats.conf")
    fi
    # -D would be debug; the default log level is enough for a post-mortem.
    setsid nats-server "${conf[@]}" -a "$addr" -p "$port" -P "$dir/pid" -l "$dir/nats.log" \
        </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 100); do
        if [ -f "$dir/pid" ] && grep -q "Server is ready" "$dir/nats.log" 2>/dev/null; then
            echo "nats://$addr:$port" >"$dir/url"
            cat "$dir/url"
            exit 0
        fi
        sleep 0.05
    done
    echo "nats.sh: nats-server did not start; see $dir/nats.log" >&2
    tail -5 "$dir/nats.log" >&2 2>/dev/null || true
    exit 1
    ;;
stop)
    if running; then
        pid=$(cat "$dir/pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid"
    ;;
url)
    [ -f "$dir/url" ] || { echo "nats.sh: not started in $dir" >&2; exit 1; }
    cat "$dir/url"
    ;;
*)
    echo "usage: $0 start|stop|url [DIR]" >&2
    exit 2
    ;;
esac

# loopback.sh: the loopback set-up demo.sh, bench.sh and soak.sh share.
# Source it (bash) from a script that has cd'ed to the workspace root:
#
#   . scripts/lib/loopback.sh
#
# Everything stays on 127.0.0.0/8 and in the caller's directory $D:
#   ba_need_pkg CMD PKG            install PKG (apt) unless CMD is on PATH
#   ba_free_port IP [IP...]        a TCP port free on every IP (one line)
#   ba_certs DIR                   CA, server and client certificates for
#                                  config.cargo.com (scripts/make-certs.sh, openssl)
#   ba_hosts_file FILE IP...       FILE maps config.cargo.com to each IP, in order
#   ba_agent_config FILE DIR PORT PLUGIN_DIR [LINE...]
#                                  an agent config: the CA and hosts file of DIR,
#                                  DNS off, state in DIR/state; each LINE is
#                                  added to [agent] (e.g. 'ctl_socket = "..."')
#   ba_wait_socket PATH [TRIES]    waits (TRIES x 0.1 s, default 50) for a socket
#   ba_wait_port IP PORT [TRIES]   waits for something listening on IP:PORT
#   ba_wait_agent SERVER ADMIN [TRIES]
#                                  waits until the server lists an agent and
#                                  prints its host id (empty if none came)
#   ba_stop PID...                 SIGTERM, up to 5 s, then SIGKILL; reaps
#   ba_private_etc SRC_DIR [SECONDS] -- CMD...
#                                  runs CMD (bounded by SECONDS) in a private mount namespace
#                                  (unshare -m) where each file of SRC_DIR is
#                                  bind-mounted over /etc/NAME: the machine's
#                                  own /etc is never touched (needs root)
# Key design decision: functions only, no side effect on sourcing, so a
# script keeps its own traps, temporary directory and order of steps.

BA_NAME=config.cargo.com

ba_need_pkg() { # ba_need_pkg COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    printf '[loopback] installing %s\n' "$2" >&2
    apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; }
}

ba_free_port() { # ba_free_port IP [IP...]
    python3 - "$@" <<'PY'
import socket, sys
ips = sys.argv[1:]
for _ in range(50):
    first = socket.socket()
    first.bind((ips[0], 0))
    port = first.getsockname()[1]
    held, ok = [first], True
    for ip in ips[1:]:
        s = socket.socket()
        try:
            s.bind((ip, port))
        except OSError:
            ok = False
            break
        held.append(s)
    for s in held:
        s.close()
    if ok:
        print(port)
        sys.exit(0)
sys.exit("no port free on all of " + " ".join(ips))
PY
}

ba_certs() { # ba_certs DIR
    scripts/make-certs.sh "$1" "$BA_NAME"
}

ba_hosts_file() { # ba_hosts_file FILE IP...
    local file=$1 ip
    shift
    : > "$file"
    for ip in "$@"; do printf '%s %s\n' "$ip" "$BA_NAME" >> "$file"; done
}

ba_agent_config() { # ba_agent_config FILE DIR PORT PLUGIN_DIR [LINE...]
    local file=$1 dir=$2 port=$3 plugins=$4 line
    shift 4
    {
        printf '[server]\nname = "%s"\nport = %s\nca = "%s/ca.pem"\nhosts_file = "%s/hosts"\n' \
            "$BA_NAME" "$port" "$dir" "$dir"
        printf '# The hosts file only: no DNS query leaves this machine.\ndns = false\nconnect_timeout = 2\n\n'
        printf '[agent]\nstate_dir = "%s/state"\nplugin_dir = "%s"\n' "$dir" "$plugins"
        for line in "$@"; do printf '%s\n' "$line"; done
    } > "$file"
}

ba_wait_socket() { # ba_wait_socket PATH [TRIES]
    local i
    for i in $(seq "${2:-50}"); do [ -S "$1" ] && return 0; sleep 0.1; done
    [ -S "$1" ]
}

ba_wait_port() { # ba_wait_port IP PORT [TRIES]
    local i
    for i in $(seq "${3:-50}"); do
        python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()' \
            "$1" "$2" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

ba_wait_agent() { # ba_wait_agent SERVER_BIN ADMIN [TRIES]
    local i host
    for i in $(seq "${3:-100}"); do
        host=$("$1" list --admin "$2" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    print(json.loads(line).get("host", "")); break
' || true)
        [ -n "$host" ] && { printf '%s\n' "$host"; return 0; }
        sleep 0.2
    done
    return 1
}

ba_stop() { # ba_stop PID...
    local pid i
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

ba_private_etc() { # ba_private_etc SRC_DIR [SECONDS] -- CMD...
    local src=$1 limit=
    shift
    if [ "${1:-}" != "--" ]; then limit=$1; shift; fi
    [ "${1:-}" = "--" ] && shift
    BA_SRC=$src ${limit:+timeout "$limit"} unshare --mount --propagation private -- bash -c '
        set -euo pipefail
        for f in "$BA_SRC"/*; do mount --bind "$f" "/etc/$(basename "$f")"; done
        exec "$@"' ba_private_etc "$@"
}

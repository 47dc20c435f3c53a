#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for tests, the demo and the bench: its
# own data directory in DIR, listening on 127.0.0.1 only (and a Unix socket
# in DIR), password (scram-sha-256) authentication for one superuser,
# run as the `postgres` user when started by root.
#
#   scripts/pg.sh start [DIR] [--port N] [--watch PID]   prints the URL
#   scripts/pg.sh url [DIR]                               prints the URL
#   scripts/pg.sh status [DIR]                            exit 0 if running
#   scripts/pg.sh stop [DIR]                              stops it, removes DIR
#
# DIR defaults to $BA_PG_DIR, else /tmp/basicagent-pg-$UID. `start` creates
# DIR (it must not exist, or be an empty directory of ours), picks a free
# loopback port unless --port is given, and with --watch PID stops the
# cluster and removes DIR once process PID has gone (a test binary starts
# one this way and needs no teardown). Installs PostgreSQL 15 with apt-get
# if /usr/lib/postgresql/15/bin is missing (root only).
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
USER_NAME=basicagent

die() { echo "pg.sh: $*" >&2; exit 1; }

cmd=${1:-}; shift || true
dir=""
port=""
watch=""
while [ $# -gt 0 ]; do
    case "$1" in
        --port) port=${2:?--port N}; shift 2 ;;
        --watch) watch=${2:?--watch PID}; shift 2 ;;
        -*) die "unknown option $1" ;;
        *) [ -z "$dir" ] || die "one DIR only"; dir=$1; shift ;;
    esac
done
dir=${dir:-${BA_PG_DIR:-/tmp/basicagent-pg-$(id -u)}}
dir=$(realpath -m -- "$dir")

# Run a command as the cluster's owner: `postgres` when we are root
# (PostgreSQL refuses to run as root), else ourselves.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

install_if_missing() {
    [ -x "$PGBIN/initdb" ] && return 0
    [ "$(id -u)" = 0 ] || die "PostgreSQL 15 is not installed ($PGBIN/initdb missing) and we are not root to install it: apt-get install postgresql-15"
    # Several test binaries start at once: one installs, the others wait.
    exec 9>/run/basicagent-pg-install.lock
    flock 9
    if [ ! -x "$PGBIN/initdb" ]; then
        echo "pg.sh: installing postgresql-15" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 postgresql-15 >&2
    fi
    flock -u 9
    exec 9>&-
    [ -x "$PGBIN/initdb" ] || die "postgresql-15 installed but $PGBIN/initdb is missing"
}

url() {
    [ -f "$dir/url" ] || die "no cluster in $dir (run: $0 start $dir)"
    cat "$dir/url"
}

running() {
    [ -f "$dir/data/postmaster.pid" ] && as_owner "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

# A TCP port on 127.0.0.1 that nothing listens on now (postgres may still
# lose a race for it: start retries with another one).
free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

start() {
    install_if_missing
    if [ -e "$dir" ]; then
        [ -d "$dir" ] && [ ! -L "$dir" ] || die "$dir exists and is not a directory"
        [ "$(stat -c %u "$dir")" = "$(id -u)" ] || die "$dir is not ours"
        [ -z "$(ls -A "$dir")" ] || die "$dir is not empty (stop the cluster there first: $0 stop $dir)"
    else
        mkdir -m 0700 "$dir"
    fi
    chmod 0711 "$dir"   # the owner (postgres) must reach data/ inside it
    if ! as_owner test -x "$dir"; then
        rmdir "$dir" 2>/dev/null || true
        die "the postgres user cannot reach $dir (a parent directory lacks o+x); use a directory under /tmp"
    fi
    local pass
    pass=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    mkdir -m 0700 "$dir/data"
    (umask 077; printf '%s\n' "$pass" > "$dir/pwfile")
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir/data" "$dir/pwfile"; fi
    as_owner "$PGBIN/initdb" -D "$dir/data" -U "$USER_NAME" --pwfile="$dir/pwfile" \
        -A scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-instructions >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    rm -f "$dir/pwfile"
    # Loopback only; the socket lives in the data directory (not in
    # /var/run/postgresql, shared with other clusters).
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/data'
max_connections = 200
shared_buffers = 128MB
logging_collector = off
log_min_messages = warning
EOF
    local tries=0 ok=0
    while [ $tries -lt 5 ]; do
        tries=$((tries + 1))
        local p=${port:-$(free_port)}
        if as_owner "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 \
            -o "-p $p" start >/dev/null 2>&1; then
            echo "$p" > "$dir/port"
            ok=1
            break
        fi
        [ -z "$port" ] || break   # a given port: no second try
    done
    if [ $ok != 1 ]; then
        tail -20 "$dir/data/server.log" >&2 || true
        die "postgres did not start"
    fi
    (umask 077; echo "postgres://$USER_NAME:$pass@127.0.0.1:$(cat "$dir/port")/postgres" > "$dir/url")
    if [ -n "$watch" ]; then
        # Detached from our stdout so that whoever reads the URL sees EOF.
        nohup setsid "$0" _watch "$dir" --watch "$watch" </dev/null >/dev/null 2>&1 &
    fi
    url
}

stop() {
    if [ -d "$dir/data" ]; then
        as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    fi
    if [ -f "$dir/url" ] || [ -d "$dir/data" ]; then
        rm -rf "$dir"
    fi
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    url) url ;;
    status) running ;;
    # Restart the server on the same port (tests of "PostgreSQL restarted").
    pause) as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null ;;
    resume) as_owner "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 \
                -o "-p $(cat "$dir/port")" start >/dev/null ;;
    _watch)
        while kill -0 "$watch" 2>/dev/null; do sleep 1; done
        stop ;;
    *) die "usage: $0 start|stop|url|status|pause|resume [DIR] [--port N] [--watch PID]" ;;
esac

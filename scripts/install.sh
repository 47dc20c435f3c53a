#!/usr/bin/env bash
# install.sh: install BasicAgent from a built workspace (or remove it).
#
#   scripts/install.sh [--prefix P] [--destdir D] [--build-dir DIR]
#   scripts/install.sh --uninstall [--prefix P] [--destdir D]
#
# Lays out (with the default prefix /usr):
#   P/sbin/BasicAgent                 the daemon
#   P/bin/BasicAgentCtl               the ctl tool
#   P/lib/basicagent/plugins/lib*.so  every plugin built (not the test fixture
#                                     libfixture_misbehave.so, not the C example
#                                     libgetinfo_hello.so), each with its
#                                     lib*.so.sig when the build dir has one
#   P/include/basicagent/basicagent_plugin.h  the plugin ABI header (C SDK)
#   P/share/pkgconfig/basicagent-plugin.pc    `pkg-config --cflags basicagent-plugin`
#   P/lib/systemd/system/basicagent.service
#   P/share/doc/basicagent/           operations.md, protocol.md, plugins.md,
#                                     examples/getinfo_loadavg.c (a C plugin)
#   P/lib/basicagent/install-manifest what --uninstall removes
#   /etc/init.d/basicagent            the LSB init script
#   /etc/default/basicagent           its settings (kept if present)
#   /etc/basicagent/agent.toml        commented default configuration (kept if present)
#   /etc/logrotate.d/basicagent
#   /var/lib/basicagent, /var/log/basicagent
#
# --destdir D puts everything under D (staging, packaging, tests); paths
# written into files never contain D. --build-dir is where the binaries and
# plugins are (default target/release; build them with
# `cargo build --release --workspace`). --uninstall removes what the
# manifest lists and keeps /etc/basicagent, /etc/default/basicagent and
# /var/lib/basicagent (configuration and state) and the log.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/usr
DESTDIR=
BUILD_DIR=$ROOT/target/release
UNINSTALL=0
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || usage; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --destdir) [ $# -ge 2 ] || usage; DESTDIR=$2; shift 2 ;;
        --destdir=*) DESTDIR=${1#*=}; shift ;;
        --build-dir) [ $# -ge 2 ] || usage; BUILD_DIR=$2; shift 2 ;;
        --build-dir=*) BUILD_DIR=${1#*=}; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h | --help) usage ;;
        *) echo "install.sh: unknown argument $1" >&2; usage ;;
    esac
done
case $PREFIX in
    /*) PREFIX=${PREFIX%/} ;;
    *) echo "install.sh: --prefix must be absolute: $PREFIX" >&2; exit 2 ;;
esac
if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
fi

SBINDIR=$PREFIX/sbin
BINDIR=$PREFIX/bin
LIBDIR=$PREFIX/lib/basicagent
PLUGINDIR=$LIBDIR/plugins
UNITDIR=$PREFIX/lib/systemd/system
DOCDIR=$PREFIX/share/doc/basicagent
MANIFEST=$LIBDIR/install-manifest
CONFDIR=/etc/basicagent
# Plugins that are never installed: the misbehaving test fixture (and its
# name before the rename, in a build dir from before it) and the C example
# (build it yourself from plugins/examples if you want it).
SKIP_PLUGINS=" libfixture_misbehave.so libgetinfo_testkit.so libgetinfo_hello.so libgetinfo_loadavg.so "
INCLUDEDIR=$PREFIX/include/basicagent
PKGCONFIGDIR=$PREFIX/share/pkgconfig

D() { printf '%s%s' "$DESTDIR" "$1"; }

if [ "$UNINSTALL" = 1 ]; then
    if [ ! -f "$(D "$MANIFEST")" ]; then
        echo "install.sh: $(D "$MANIFEST") not found: nothing installed with this prefix" >&2
        exit 1
    fi
    # The files it lists, then the directories if empty.
    while IFS= read -r path; do
        [ -n "$path" ] || continue
        rm -f "$(D "$path")"
        echo "removed $(D "$path")"
    done < "$(D "$MANIFEST")"
    rm -f "$(D "$MANIFEST")"
    for dir in "$PLUGINDIR" "$LIBDIR" "$DOCDIR/examples" "$DOCDIR" "$INCLUDEDIR" "$PKGCONFIGDIR"; do
        rmdir "$(D "$dir")" 2>/dev/null || true
    done
    echo "kept (configuration, state, log): $(D "$CONFDIR") $(D /etc/default/basicagent) $(D /var/lib/basicagent) $(D /var/log/basicagent)"
    exit 0
fi

for bin in BasicAgent BasicAgentCtl; do
    if [ ! -x "$BUILD_DIR/$bin" ]; then
        echo "install.sh: $BUILD_DIR/$bin not found: build first (cargo build --release --workspace) or pass --build-dir" >&2
        exit 1
    fi
done

INSTALLED=()
put() { # MODE SOURCE TARGET (target without DESTDIR)
    install -D -m "$1" "$2" "$(D "$3")"
    INSTALLED+=("$3")
    echo "installed $(D "$3")"
}
# A configuration file: installed only if absent (an operator's edits win).
put_config() { # MODE SOURCE TARGET
    if [ -e "$(D "$3")" ]; then
        echo "kept existing $(D "$3")"
    else
        install -D -m "$1" "$2" "$(D "$3")"
        echo "installed $(D "$3")"
    fi
}

put 0755 "$BUILD_DIR/BasicAgent" "$SBINDIR/BasicAgent"
put 0755 "$BUILD_DIR/BasicAgentCtl" "$BINDIR/BasicAgentCtl"
install -d -m 0755 "$(D "$PLUGINDIR")"
found=0
for so in "$BUILD_DIR"/lib*_*.so; do
    [ -f "$so" ] || continue
    name=$(basename "$so")
    case $SKIP_PLUGINS in *" $name "*) continue ;; esac
    # Its signature first: a daemon that sees the new .so sees its .sig.
    if [ -f "$so.sig" ]; then
        install -m 0644 "$so.sig" "$(D "$PLUGINDIR")/.$name.sig.new"
        mv -f "$(D "$PLUGINDIR")/.$name.sig.new" "$(D "$PLUGINDIR/$name.sig")"
        INSTALLED+=("$PLUGINDIR/$name.sig")
        echo "installed $(D "$PLUGINDIR/$name.sig")"
    fi
    # Copy then rename: a running daemon never maps a half-written file.
    install -m 0644 "$so" "$(D "$PLUGINDIR")/.$name.new"
    mv -f "$(D "$PLUGINDIR")/.$name.new" "$(D "$PLUGINDIR/$name")"
    INSTALLED+=("$PLUGINDIR/$name")
    echo "installed $(D "$PLUGINDIR/$name")"
    found=$((found + 1))
done
[ "$found" -gt 0 ] || echo "install.sh: warning: no plugins in $BUILD_DIR" >&2

# The C SDK: the header and its pkg-config file (no library: a plugin
# links against nothing of ours).
put 0644 "$ROOT/abi/include/basicagent_plugin.h" "$INCLUDEDIR/basicagent_plugin.h"
put 0644 "$ROOT/plugins/examples/getinfo_loadavg.c" "$DOCDIR/examples/getinfo_loadavg.c"
VERSION=$("$BUILD_DIR/BasicAgent" -V 2>/dev/null | awk '{print $2}')
PC=$(mktemp)
cat > "$PC" <<EOF
prefix=$PREFIX
includedir=\${prefix}/include

Name: basicagent-plugin
Description: BasicAgent plugin ABI (C header basicagent_plugin.h; nothing to link)
Version: ${VERSION:-0}
Cflags: -I\${includedir}/basicagent
EOF
put 0644 "$PC" "$PKGCONFIGDIR/basicagent-plugin.pc"
rm -f "$PC"

put 0644 "$ROOT/scripts/basicagent.service" "$UNITDIR/basicagent.service"
put 0755 "$ROOT/scripts/basicagent.init" /etc/init.d/basicagent
put 0644 "$ROOT/scripts/basicagent.logrotate" /etc/logrotate.d/basicagent
for doc in docs/operations.md docs/protocol.md docs/plugins.md; do
    [ -f "$ROOT/$doc" ] && put 0644 "$ROOT/$doc" "$DOCDIR/$(basename "$doc")"
done

# Paths inside the shipped files assume /usr; another prefix is written in.
if [ "$PREFIX" != /usr ]; then
    sed -i "s|/usr/sbin/BasicAgent|$SBINDIR/BasicAgent|g" \
        "$(D "$UNITDIR/basicagent.service")" "$(D /etc/init.d/basicagent)"
fi
put_config 0644 "$ROOT/scripts/basicagent.default" /etc/default/basicagent
TMP=$(mktemp)
trap 'rm -f "$TMP"' EXIT
cp "$ROOT/scripts/agent.toml" "$TMP"
if [ "$PLUGINDIR" != /usr/lib/basicagent/plugins ]; then
    sed -i "s|^# plugin_dir = .*|plugin_dir = \"$PLUGINDIR\"|" "$TMP"
fi
install -d -m 0755 "$(D "$CONFDIR")"
put_config 0644 "$TMP" "$CONFDIR/agent.toml"
install -d -m 0700 "$(D /var/lib/basicagent)"
install -d -m 0750 "$(D /var/log/basicagent)"

printf '%s\n' "${INSTALLED[@]}" > "$(D "$MANIFEST")"
echo "installed $(D "$MANIFEST")"
echo
echo "Next: put the CA certificate in $CONFDIR/ca.pem, set [server] name in"
echo "$CONFDIR/agent.toml, then start it: /etc/init.d/basicagent start"
echo "(or systemctl enable --now basicagent). See $DOCDIR/operations.md."

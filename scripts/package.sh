#!/usr/bin/env bash
# package.sh: build the Debian package target/debian/basicagent_VERSION_ARCH.deb
# with dpkg-deb, from the same file layout scripts/install.sh makes.
#
#   scripts/package.sh                      # cargo build --release, then package
#   scripts/package.sh --build-dir target/debug --output DIR --compress none
#
# --build-dir packages binaries already built there (no cargo build);
# --compress is dpkg-deb's -Z (xz, gzip, zstd, none; none is quick for tests).
#
# VERSION is what the built daemon reports (`BasicAgent -V`), ARCH is
# `dpkg --print-architecture`. Everything under /etc is a conffile: dpkg -r
# keeps them, dpkg -P removes them (and /var/lib/basicagent, /var/log/basicagent).
# The package does not start the daemon on a first install (it needs a CA
# and a server name first); an upgrade restarts a running daemon.
#
# BASICAGENT_SIGNING_KEY=KEY (a key from `BasicAgentCtl plugin keygen`):
# every packaged plugin gets its .sig (scripts/sign-plugins.sh), and
# KEY.pub, if present, ships as /usr/share/basicagent/plugin-signing-key.pub
# for agent.trusted_keys. The package also carries the C SDK: the header
# in /usr/include/basicagent and basicagent-plugin.pc.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=$ROOT/target/release
OUT_DIR=$ROOT/target/debian
BUILD=1
COMPRESS=xz
while [ $# -gt 0 ]; do
    case $1 in
        --build-dir) BUILD_DIR=$2; BUILD=0; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --output) OUT_DIR=$2; shift 2 ;;
        --compress) COMPRESS=$2; shift 2 ;;
        -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
command -v dpkg-deb >/dev/null 2>&1 || { echo "package.sh: dpkg-deb not found" >&2; exit 1; }

if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release --workspace)
fi
[ -x "$BUILD_DIR/BasicAgent" ] || { echo "package.sh: $BUILD_DIR/BasicAgent not found" >&2; exit 1; }

VERSION=$("$BUILD_DIR/BasicAgent" -V | awk '{print $2}')
ARCH=$(dpkg --print-architecture)
[ -n "$VERSION" ] || { echo "package.sh: cannot read the version from $BUILD_DIR/BasicAgent -V" >&2; exit 1; }

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
PKG=$STAGE/basicagent
"$ROOT/scripts/install.sh" --prefix /usr --destdir "$PKG" --build-dir "$BUILD_DIR" >/dev/null
# dpkg keeps its own list of files; install.sh's is for --uninstall only.
rm -f "$PKG/usr/lib/basicagent/install-manifest"
if [ -n "${BASICAGENT_SIGNING_KEY:-}" ]; then
    "$ROOT/scripts/sign-plugins.sh" "$BASICAGENT_SIGNING_KEY" "$PKG/usr/lib/basicagent/plugins" \
        "$BUILD_DIR/BasicAgentCtl" >&2
    chmod 0644 "$PKG"/usr/lib/basicagent/plugins/*.sig
    if [ -f "$BASICAGENT_SIGNING_KEY.pub" ]; then
        install -D -m 0644 "$BASICAGENT_SIGNING_KEY.pub" "$PKG/usr/share/basicagent/plugin-signing-key.pub"
    fi
fi

# The lowest glibc the binaries need (the highest GLIBC_x.y symbol version).
GLIBC=
if command -v objdump >/dev/null 2>&1; then
    GLIBC=$(find "$PKG/usr" -type f \( -name 'BasicAgent*' -o -name '*.so' \) -exec objdump -T {} + 2>/dev/null \
        | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1 || true)
fi
DEPENDS="libc6${GLIBC:+ (>= $GLIBC)}, bash"

mkdir -p "$PKG/DEBIAN"
(cd "$PKG" && find etc -type f | sed 's|^|/|' | sort) > "$PKG/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$PKG" | awk '{print $1}')
cat > "$PKG/DEBIAN/control" <<EOF
Package: basicagent
Version: $VERSION
Architecture: $ARCH
Maintainer: BasicAgent maintainers <basicagent@localhost>
Installed-Size: $SIZE
Depends: $DEPENDS
Recommends: logrotate
Section: admin
Priority: optional
Description: host agent for Linux fleets
 BasicAgent dials out to a control server over TLS, registers, and answers
 requests: run shell commands (sync.bash) or report host facts (getinfo.*),
 each served by a plugin in /usr/lib/basicagent/plugins. BasicAgentCtl runs
 the same plugins directly on the host.
EOF

cat > "$PKG/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    install -d -m 0700 /var/lib/basicagent
    install -d -m 0750 /var/log/basicagent
    if [ -x /usr/sbin/update-rc.d ]; then
        update-rc.d basicagent defaults >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        systemctl enable basicagent.service >/dev/null 2>&1 || true
    fi
    # An upgrade restarts a running daemon; a first install starts nothing
    # (configure the server name and CA first, see operations.md).
    if [ -n "$2" ]; then
        if [ -d /run/systemd/system ]; then
            systemctl try-restart basicagent.service || true
        elif [ -x /etc/init.d/basicagent ]; then
            /etc/init.d/basicagent try-restart || true
        fi
    fi
fi
exit 0
EOF

cat > "$PKG/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# Removal stops the daemon and waits for it; an upgrade keeps it running
# until postinst restarts it (plugins and binaries are replaced by rename).
if [ "$1" = remove ] || [ "$1" = deconfigure ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop basicagent.service || true
        systemctl disable basicagent.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/basicagent ]; then
        /etc/init.d/basicagent stop || true
    fi
fi
exit 0
EOF

cat > "$PKG/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
case "$1" in
    remove)
        if [ -d /run/systemd/system ]; then
            systemctl --system daemon-reload >/dev/null || true
        fi
        ;;
    purge)
        rm -f /etc/systemd/system/multi-user.target.wants/basicagent.service
        if [ -x /usr/sbin/update-rc.d ]; then
            update-rc.d basicagent remove >/dev/null || true
        fi
        rm -rf /var/lib/basicagent /var/log/basicagent
        rm -f /run/basicagent.pid
        ;;
esac
exit 0
EOF
chmod 0755 "$PKG/DEBIAN/postinst" "$PKG/DEBIAN/prerm" "$PKG/DEBIAN/postrm"

mkdir -p "$OUT_DIR"
DEB=$OUT_DIR/basicagent_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group "-Z$COMPRESS" --build "$PKG" "$DEB" >/dev/null
echo "$DEB"

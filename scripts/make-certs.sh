#!/bin/sh
# make-certs.sh DIR [NAME]: a throwaway CA, a server certificate for NAME
# (default config.cargo.com) and a client certificate, for tests and demos.
# make-certs.sh --agent DIR HOST_ID...: with the CA in DIR, one agent
# certificate per host id, bound to it for the server's mTLS check: SAN URI
# urn:uuid:HOST_ID, CN HOST_ID (docs/operations.md, "Certificates per host").
#
# Writes DIR/ca.pem, ca.key, server.pem, server.key, client.pem, client.key;
# with --agent, DIR/agent-HOST_ID.pem and DIR/agent-HOST_ID.key.
# Idempotent-friendly: an existing CA in DIR is reused (so agents that
# already trust it keep working); the server and client certificates are
# made again each run. Delete DIR to start over. Needs openssl.
set -eu

AGENTS=
if [ "${1:-}" = "--agent" ]; then
    shift
    if [ $# -lt 2 ]; then
        echo "usage: $0 --agent DIR HOST_ID..." >&2
        exit 2
    fi
    AGENTS=1
elif [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 DIR [NAME] | $0 --agent DIR HOST_ID..." >&2
    exit 2
fi
DIR=$1
NAME=${2:-config.cargo.com}
DAYS=${DAYS:-825}

command -v openssl >/dev/null 2>&1 || { echo "$0: openssl not found" >&2; exit 1; }
mkdir -p "$DIR"
umask 077
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if [ -s "$DIR/ca.pem" ] && [ -s "$DIR/ca.key" ]; then
    echo "reusing CA $DIR/ca.pem"
elif [ -n "$AGENTS" ]; then
    echo "$0: no CA in $DIR (run $0 $DIR first)" >&2
    exit 1
else
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$DIR/ca.key" -out "$DIR/ca.pem" -days "$DAYS" -subj "/CN=BasicAgent test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    echo "wrote $DIR/ca.pem $DIR/ca.key (CA)"
fi

# A SAN entry: IP addresses as IP:, anything else as DNS:.
case $NAME in
    *[!0-9.]*) case $NAME in *:*) SAN="IP:$NAME" ;; *) SAN="DNS:$NAME" ;; esac ;;
    *) SAN="IP:$NAME" ;;
esac

# leaf NAME CN SAN EXTKEYUSAGE
leaf() {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$TMP/$1.key" -out "$TMP/$1.csr" -subj "/CN=$2" 2>/dev/null
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$4"
        [ -n "$3" ] && echo "subjectAltName=$3"
    } > "$TMP/$1.ext"
    openssl x509 -req -in "$TMP/$1.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial \
        -CAserial "$TMP/ca.srl" -out "$TMP/$1.pem" -days "$DAYS" -extfile "$TMP/$1.ext" 2>/dev/null
    mv "$TMP/$1.key" "$DIR/$1.key"
    mv "$TMP/$1.pem" "$DIR/$1.pem"
}

if [ -n "$AGENTS" ]; then
    shift
    for ID in "$@"; do
        # A host id is a UUID (hex digits and dashes); nothing else goes into a file name or a subject.
        case $ID in
            ''|*[!0-9a-fA-F-]*) echo "$0: bad host id $ID (want a UUID)" >&2; exit 2 ;;
        esac
        leaf "agent-$ID" "$ID" "URI:urn:uuid:$ID" clientAuth
        chmod 644 "$DIR/agent-$ID.pem"
        echo "wrote $DIR/agent-$ID.pem $DIR/agent-$ID.key (agent, urn:uuid:$ID)"
    done
    exit 0
fi

leaf server "$NAME" "$SAN" serverAuth
echo "wrote $DIR/server.pem $DIR/server.key (server, $SAN)"
leaf client "basicagent-client" "" clientAuth
echo "wrote $DIR/client.pem $DIR/client.key (client)"
chmod 644 "$DIR/ca.pem" "$DIR/server.pem" "$DIR/client.pem"

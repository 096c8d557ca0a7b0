#!/bin/sh
# Container entry point: use the iptables backend the node already uses, then run nodecache.
#
# A node's kubelet and kube-proxy have written their chains with either the
# legacy or the nft backend; rules written with the other one would be
# invisible to them (and to an operator's iptables-save). Whichever backend
# holds more rules wins; nft on a tie (an empty node).
#
# The root filesystem may be read-only, so the choice is made with symlinks in
# a writable runtime directory put first on PATH, not with update-alternatives.
set -eu

BIN_DIR="${NODECACHE_BIN_DIR:-/run/nodecache/bin}"

count_rules() {
    { "iptables-$1-save" 2>/dev/null; "ip6tables-$1-save" 2>/dev/null; } | grep -c '^-' || true
}

backend() {
    legacy=$(count_rules legacy)
    nft=$(count_rules nft)
    if [ "${legacy:-0}" -gt "${nft:-0}" ]; then echo legacy; else echo nft; fi
}

if [ "${1:-}" = "--print-backend" ]; then
    backend
    exit 0
fi

mode=$(backend)
mkdir -p "$BIN_DIR"
for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf "$(command -v "xtables-$mode-multi")" "$BIN_DIR/$tool"
done
echo "nodecache: using the $mode iptables backend (the one holding the node's rules)" >&2
PATH="$BIN_DIR:$PATH" exec nodecache "$@"

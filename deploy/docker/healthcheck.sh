#!/bin/bash
# Docker HEALTHCHECK for registry-edge without curl: GET /healthz (or $1) on the admin address
# over bash's /dev/tcp, healthy on a 200 status line.
#   REGISTRY_EDGE_ADMIN  admin address as host:port (default 127.0.0.1:9901; [::1]:9901 for IPv6)
set -u
addr=${REGISTRY_EDGE_ADMIN:-127.0.0.1:9901}
path=${1:-/healthz}
port=${addr##*:}
host=${addr%:*}
host=${host#[}
host=${host%]}
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$addr" >&3 || exit 1
IFS= read -r -t 4 status <&3 || exit 1
case $status in
  "HTTP/1."[01]" 200"*) exit 0 ;;
  *) echo "registry-edge admin $addr$path: ${status%$'\r'}" >&2; exit 1 ;;
esac

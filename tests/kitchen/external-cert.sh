#!/bin/sh
# Put an "externally provided" certificate for domain $1 in place (what an
# operator's own CA tooling would do); the external-tls suite points at it.
set -eu
domain="$1"
dir="/etc/ssl/chatmail-external/$domain"
[ -s "$dir/fullchain.pem" ] && exit 0
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 90 \
  -subj "/CN=$domain/O=external-ca" -addext "subjectAltName=DNS:$domain,DNS:mta-sts.$domain" \
  -keyout "$dir/privkey.pem" -out "$dir/fullchain.pem" 2>/dev/null
chmod 0644 "$dir/fullchain.pem"

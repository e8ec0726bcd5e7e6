#!/bin/sh
# Managed by Salt (chatmail-salt): acmetool calls hooks with the event name
# first; reload the TLS users once new certificates are live.
[ "$1" = "live-updated" ] || exit 42
for svc in postfix dovecot nginx coturn; do
    systemctl try-reload-or-restart "$svc" || true
done

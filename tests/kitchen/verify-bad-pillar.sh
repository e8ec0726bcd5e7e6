#!/bin/sh
# Verifier of the bad-pillar suite, run on the instance: the highstate must
# fail, name the offending keys and change nothing.  $1: salt config dir.
set -u
out=$(salt-call --local --config-dir="${1:-/etc/salt}" --retcode-passthrough state.apply 2>&1)
rc=$?
echo "$out" | tail -n 40
fail=0
[ "$rc" -ne 0 ] || { echo "FAIL: highstate succeeded with a bad pillar"; fail=1; }
for key in no_such_setting max_mailbox_size; do
  echo "$out" | grep -q "$key" || { echo "FAIL: error does not name $key"; fail=1; }
done
for path in /etc/chatmail /etc/postfix/main.cf /etc/dovecot/dovecot.conf /home/vmail; do
  [ ! -e "$path" ] || { echo "FAIL: $path exists (something was changed)"; fail=1; }
done
[ "$fail" -eq 0 ] && echo "OK: bad pillar refused before any change"
exit "$fail"

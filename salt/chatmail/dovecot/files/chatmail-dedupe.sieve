# Managed by salt (chatmail.dovecot); local edits are overwritten.
# The relay's only Sieve script: LMTP runs it before every delivery
# (sieve_before in dovecot.conf); users have no scripts of their own.
#
# Exactly once per mailbox (dedupe_period, docs/dovecot.md): a sender that
# was refused (4xx) after its message had already been queued sends the
# message again.  A message whose From address, From header and Message-ID
# this mailbox already received within the period is dropped (LMTP still
# answers 250).  Nothing else is ever dropped:
#  - no Message-ID of the form <left@right>, no From address, or more
#    than one Message-ID or From header: delivered;
#  - the From address is part of the id: filtermail lets a message in only
#    when its single From is the sender's login (submission) or aligned
#    with a valid DKIM signature (port 25), so nobody but the sender's
#    domain can make a mailbox drop the sender's messages by sending
#    their Message-ID first;
#  - the id is remembered only once the message is stored: a delivery that
#    failed (full mailbox, full disk) is retried, not dropped.
# A newline separates the parts: no unfolded header value contains one.
require ["duplicate", "variables", "relational", "comparator-i;ascii-numeric"];

if allof (header :count "eq" :comparator "i;ascii-numeric" "message-id" "1",
          header :count "eq" :comparator "i;ascii-numeric" "from" "1") {
  if header :matches "message-id" "*<?*@?*>*" {
    set "id" "${0}";
  }
  if address :all :matches "from" "?*@?*" {
    set "addr" "${0}";
  }
  if header :matches "from" "?*" {
    set "from" "${0}";
  }
  if allof (not string :is "${id}" "",
            not string :is "${addr}" "",
            duplicate :handle "chatmail-dedupe" :uniqueid "${addr}
${from}
${id}") {
    discard;
    stop;
  }
}

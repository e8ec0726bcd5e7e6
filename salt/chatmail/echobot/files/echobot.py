"""chatmail echobot: echo@<domain> sends every encrypted message back.

One Delta Chat core (deltachat-rpc-server) holds one account per address
given on the command line.  Each logs in to this relay over loopback
(IMAP 993, SMTP 465) with the password in ``<passwords>/<domain>`` (made
on the host, readable by root and the bot's group); the account itself is
made by the highstate (chatmaild.localaccount).  The bot's invite link
(Secure-Join, what a Delta Chat user scans or opens to reach the bot with
end-to-end encryption) is written to ``<invites>/<domain>.txt``.

Installed by Salt (salt/chatmail/echobot); run by chatmail-echobot.service.
"""

import argparse
import logging
import os
import sys
import threading
import urllib.parse
from pathlib import Path

from deltachat_rpc_client import Bot, DeltaChat, EventType, Rpc, events

log = logging.getLogger("echobot")


def login_url(addr, password, host="127.0.0.1"):
    """A ``dclogin:`` URL for ``addr`` on this relay over loopback.  The
    certificate names the domain, not 127.0.0.1, so it is not checked
    (``ic``/``sc`` 3): nothing but this host sits between the two ends."""
    query = urllib.parse.urlencode(
        {
            "p": password,
            "v": 1,
            "ih": host,
            "ip": 993,
            "is": "ssl",
            "ic": 3,
            "sh": host,
            "sp": 465,
            "ss": "ssl",
            "sc": 3,
        }
    )
    return f"dclogin:{addr}?{query}"


def domain_of(addr):
    return addr.rsplit("@", 1)[1].strip("[]")


def read_password(passwords, addr):
    return (Path(passwords) / domain_of(addr)).read_text().strip()


def write_atomic(path, text):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)


def setup_account(dc, addr, password):
    """The account of ``addr`` (created at the first start), logged in with
    the current password."""
    for account in dc.get_all_accounts():
        if account.get_config("configured_addr") == addr:
            break
    else:
        account = dc.add_account()
        log.info("%s: new account", addr)
    account.update_config(
        bot="1",
        displayname="Echo",
        # no read receipts: an echo is answer enough
        mdns_enabled="0",
        # keep a day of messages (and echoed files) in /var/lib/echobot
        delete_device_after="86400",
    )
    # also when configured: the password may have been reset
    account.add_transport_from_qr(login_url(addr, password))
    return account


def echo(event):
    """NewMessage hook: send the message back into its chat, unless it came
    without end-to-end encryption (the reply would be cleartext, which the
    relay refuses to send anyway)."""
    snapshot = event.message_snapshot
    if snapshot.is_info:
        return
    if not snapshot.get("show_padlock"):
        log.info("message %s is not encrypted: not echoed", snapshot.id)
        return
    snapshot.chat.send_message(text=snapshot.text, file=snapshot.get("file") or None)


def log_core(event):
    """The core's warnings and errors into the journal."""
    log.warning("%s: %s", event.kind.value, event.get("msg"))


def run(args):
    invites = Path(args.invites)
    env = {**os.environ, "DC_ACCOUNTS_PATH": args.accounts}
    with Rpc(rpc_server_path=args.rpc_server, env=env, stderr=None) as rpc:
        dc = DeltaChat(rpc)
        bots = []
        for addr in args.addrs:
            account = setup_account(dc, addr, read_password(args.passwords, addr))
            write_atomic(invites / f"{domain_of(addr)}.txt", account.get_qr_code() + "\n")
            hooks = [
                (echo, events.NewMessage()),
                (log_core, events.RawEvent((EventType.WARNING, EventType.ERROR))),
            ]
            bots.append(Bot(account, hooks, logger=log))
            log.info("%s: online", addr)
        failed = threading.Event()

        def serve(bot):
            try:
                bot.run_forever()
            except Exception:
                log.exception("%s: event loop failed", bot.account.get_config("addr"))
            failed.set()

        for bot in bots:
            threading.Thread(target=serve, args=(bot,), daemon=True).start()
        failed.wait()
    return 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", required=True, help="the core's accounts directory")
    parser.add_argument("--rpc-server", required=True, help="path of deltachat-rpc-server")
    parser.add_argument("--invites", required=True, help="directory for <domain>.txt invites")
    parser.add_argument("--passwords", required=True, help="directory of <domain> password files")
    parser.add_argument("addrs", nargs="+", metavar="addr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

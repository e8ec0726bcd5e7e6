"""A pytest plugin loaded into chatmail/relay's online test suite when this
tree's tests run it (tests/harness/refsuite): the skips of SKIPS with their
reasons, fixes of the suite itself (FIXES), and a JSON report of each test's
outcome for the caller.

Loaded with `-p cmsalt_refsuite` in the suite's own venv; imports nothing of
this tree.
"""

import json
import os
from pathlib import Path

import pytest

# Where the suite itself is at fault: what is patched, and why.
FIXES = {
    "deltachat_rpc_client.Account.get_config('addr' / 'mail_pw')": (
        "the suite reads an account's address and password with get_config('addr') "
        "and get_config('mail_pw'); since Delta Chat core 2.x configures accounts "
        "through transports (add_transport_from_qr, add_or_update_transport, as the "
        "suite's own factory does), those keys are unset (None) and the configured "
        "values live in the account's transport: read them from there when unset"
    ),
    "chatmaild.tests.plugin maildata: headers keep their folding": (
        "the suite parses its sample mails with email.policy.SMTP and sends "
        "msg.as_string(), which refolds every header longer than 78 characters: "
        "the Autocrypt header's keydata becomes RFC 2047 encoded words "
        "(=?utf-8?q?keydata=3D...?=), a header no client writes and no Autocrypt "
        "reader parses, which this relay refuses (523 Encryption Needed: Autocrypt "
        "header syntax); the fixture's policy keeps the sample's own folding "
        "(refold_source='none')"
    ),
}

_outcomes = {}
_reasons = {}


def _short(nodeid):
    return nodeid.split("online/", 1)[-1]


def _skip_reason(nodeid, skips):
    for key, reason in skips.items():
        if nodeid == key or nodeid.startswith((key + "[", key + "::")):
            return reason
    return None


def _patch_get_config():
    from deltachat_rpc_client import Account

    original = Account.get_config

    def get_config(self, key):
        value = original(self, key)
        if value is None and key in ("addr", "mail_pw"):
            for transport in self._rpc.list_transports(self.id) or []:
                value = transport.get("addr" if key == "addr" else "password")
                if value:
                    break
        return value

    Account.get_config = get_config


def _patch_maildata_policy():
    import email.policy

    import chatmaild.tests.plugin as chatmaild_plugin

    class Policies:
        SMTP = email.policy.SMTP.clone(refold_source="none")

        def __getattr__(self, name):
            return getattr(email.policy, name)

    chatmaild_plugin.policy = Policies()


def pytest_configure(config):
    _patch_get_config()
    _patch_maildata_policy()


def pytest_report_header():
    return [f"cmsalt fix: {what}: {why}" for what, why in FIXES.items()]


def pytest_collection_modifyitems(items):
    path = os.environ.get("CMSALT_REFSUITE_SKIPS")
    skips = json.loads(Path(path).read_text()) if path else {}
    for item in items:
        reason = _skip_reason(_short(item.nodeid), skips)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"cmsalt: {reason}"))


def pytest_runtest_logreport(report):
    nodeid = _short(report.nodeid)
    if report.failed:
        _outcomes[nodeid] = "failed"
    elif report.skipped and report.when in ("setup", "call"):
        _outcomes.setdefault(nodeid, "skipped")
        if isinstance(report.longrepr, tuple):
            _reasons[nodeid] = report.longrepr[2]
    elif report.passed and report.when == "call":
        _outcomes.setdefault(nodeid, "passed")


def pytest_sessionfinish(session):
    path = os.environ.get("CMSALT_REFSUITE_REPORT")
    if path:
        Path(path).write_text(json.dumps({"outcomes": _outcomes, "reasons": _reasons}, indent=1))

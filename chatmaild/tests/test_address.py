"""The recipient mapping every per-account check uses (chatmaild.address)."""

import pytest
from chatmaild.address import (
    AddressError,
    is_account_localpart,
    normalize_domain,
    normalize_recipient,
)
from hypothesis import given
from hypothesis import strategies as st

D = "chat.example.org"


@pytest.mark.parametrize(
    "addr, account",
    [
        (f"victim@{D}", f"victim@{D}"),
        (f"<victim@{D}>", f"victim@{D}"),
        (f"VICTIM@{D.upper()}", f"victim@{D}"),
        (f"victim@{D}.", f"victim@{D}"),
        (f"victim+x@{D}", f"victim@{D}"),
        (f"victim+@{D}", f"victim@{D}"),
        (f"victim+a+b@{D}", f"victim@{D}"),
        (f'"victim"@{D}', f"victim@{D}"),
        (f'"vic\\tim"@{D}', f"victim@{D}"),
        (f'"victim+x"@{D}', f"victim@{D}"),
        ("victim@[192.0.2.7]", "victim@[192.0.2.7]"),
        ("victim@[IPv6:2001:DB8:0::7]", "victim@[2001:db8::7]"),
        ("a.b-c_d@x.org", "a.b-c_d@x.org"),
    ],
)
def test_mapped(addr, account):
    assert normalize_recipient(addr) == account


@pytest.mark.parametrize(
    "addr",
    [
        "",
        "victim",
        f"@a:victim@{D}",
        f"victim%{D}@localhost",
        f"{D}!victim@localhost",
        f"victim@{D}..",
        f"victim@.{D}",
        f"victim@{D}@{D}",
        f"victim@-{D}",
        "victim@[192.0.2.7",
        "victim@[not-an-ip]",
        f"+x@{D}",
        f".victim@{D}",
        f"vic..tim@{D}",
        f'"victim "@{D}',
        f'"vic"tim"@{D}',
        f'"victim"x@{D}',
        f"victim\n@{D}",
        f"victim\x00@{D}",
        f"vic tim@{D}",
        f"vіctim@{D}",  # Cyrillic i
        "victim@chаt.example.org",  # Cyrillic a
        f"victim@{D}\n",
        "x" * 400 + f"@{D}",
    ],
)
def test_refused(addr):
    with pytest.raises(AddressError):
        normalize_recipient(addr)


def test_domains():
    assert normalize_domain("Chat.Example.ORG.") == "chat.example.org"
    assert normalize_domain("[IPv6:::1]") == "[::1]"
    for bad in ["", ".", "a..b", "[1.2.3.4", "a b", "a_b.c\n"]:
        with pytest.raises(AddressError):
            normalize_domain(bad)


@given(st.text(max_size=40))
def test_mapping_is_idempotent_and_lands_on_an_account_name(addr):
    try:
        account = normalize_recipient(addr)
    except AddressError:
        return
    localpart, _, domain = account.rpartition("@")
    assert is_account_localpart(localpart)
    assert normalize_recipient(account) == account
    assert normalize_domain(domain) == domain

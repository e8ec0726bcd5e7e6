"""chatmail.echobot rendered for the example pillar: switched off it only
cleans up; switched on it makes the user, venv, passwords, accounts and a
sandboxed unit, with no password anywhere in the states or the unit."""

import json

from .test_render import example, render, salt_env  # noqa: F401  (fixtures)


def show(salt_env, pillar):  # noqa: F811
    proc = salt_env("state.show_sls", "chatmail.echobot", pillar_data=pillar)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    states = json.loads(proc.stdout)["local"]
    assert isinstance(states, dict), states
    return states


def with_echobot(example, **echobot):  # noqa: F811
    pillar = json.loads(json.dumps(example))
    pillar["chatmail"]["echobot"] = {"enabled": True, **echobot}
    return pillar


def test_off_by_default_only_cleans(salt_env, example):  # noqa: F811
    states = show(salt_env, example)
    assert set(states) == {
        "chatmail-echobot-service-dead",
        "chatmail-echobot-clean-files-absent",
        "chatmail-echobot-clean-daemon-reloaded",
    }


def test_on_every_domain(salt_env, example):  # noqa: F811
    states = show(salt_env, with_echobot(example))
    for domain in ("chat.example.org", "_test.example.org"):
        assert f"chatmail-echobot-password-{domain}-generated" in states
        account = states[f"chatmail-echobot-account-{domain}-present"]["cmd"]
        name = next(arg["name"] for arg in account if isinstance(arg, dict) and "name" in arg)
        # the account is made as the mailboxes' owner, the password on stdin
        assert name.startswith("setpriv --reuid=vmail --regid=vmail --groups=chatmail -- ")
        assert name.endswith(f"'echo@{domain}' < /etc/chatmail/echobot/{domain}")
    venv = states["chatmail-echobot-venv-requirements"]["chatmail_venv"]
    assert {"pkgs": ["deltachat-rpc-client==2.65.0", "deltachat-rpc-server==2.65.0"]} in venv
    assert "chatmail-echobot-service-running" in states
    assert "chatmail-echobot-service-dead" not in states
    states = show(salt_env, with_echobot(example, domains=["chat.example.org"]))
    assert "chatmail-echobot-account-chat.example.org-present" in states
    assert "chatmail-echobot-account-_test.example.org-present" not in states


def test_unit_is_sandboxed(render, cc, defaults, example_pillar):  # noqa: F811
    pillar = {**example_pillar, "echobot": {"enabled": True}}
    cmap = cc.build(defaults, {}, pillar)
    accounts = cc.echobot_accounts(cmap)
    text = render(
        "chatmail/echobot/files/echobot.service.jinja",
        chatmail=cmap,
        accounts=accounts,
        venv="/usr/local/lib/chatmail-echobot/venv",
        script="/usr/local/lib/chatmail-echobot/echobot.py",
        user="echobot",
        state_dir="/var/lib/echobot",
        invites_dir="/run/chatmail-echobot",
        passwords_dir="/etc/chatmail/echobot",
    )
    lines = set(text.splitlines())
    for want in [
        "User=echobot",
        "StateDirectory=echobot",
        "RuntimeDirectory=chatmail-echobot",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "CapabilityBoundingSet=",
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
        "MemoryMax=512M",
    ]:
        assert want in lines, want
    (exec_start,) = [line for line in lines if line.startswith("ExecStart=")]
    assert exec_start.endswith(
        " --passwords /etc/chatmail/echobot echo@_test.example.org echo@chat.example.org"
    )


def test_vhost_serves_the_invite_link_of_its_bot(render, cc, defaults, example_pillar):  # noqa: F811
    def vhost(echobot, domain):
        cmap = cc.build(defaults, {}, {**example_pillar, "echobot": echobot})
        return render(
            "chatmail/nginx/files/vhost.conf.jinja", chatmail=cmap, domain=domain, https=True
        )

    want = "alias /run/chatmail-echobot/chat.example.org.txt;"
    assert want in vhost({"enabled": True}, "chat.example.org")
    assert "echobot" not in vhost({"enabled": False}, "chat.example.org")
    only_test = {"enabled": True, "domains": ["_test.example.org"]}
    assert "echobot" not in vhost(only_test, "chat.example.org")
    assert "/run/chatmail-echobot/_test.example.org.txt" in vhost(only_test, "_test.example.org")

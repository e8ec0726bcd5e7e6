"""chatmail-newemail (POST /new) never hands out credentials that doveauth
would refuse at the first login: the kill switch and the resource brakes
answer 503 with a JSON error instead."""

import json

import pytest


@pytest.fixture
def newemail(chatmaild_config):
    from chatmaild import newemail

    return newemail


def ini(tmp_path, **params):
    path = tmp_path / "chatmail.ini"
    lines = ["[params]", "mail_domain = chat.example.org"]
    lines += [f"mailboxes_dir = {tmp_path / 'mail'}", f"nocreate_file = {tmp_path / 'nocreate'}"]
    lines += [f"{key} = {value}" for key, value in params.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def post(newemail, chatmaild_config, path):
    config = chatmaild_config.read_config(path)
    env = {"REQUEST_METHOD": "POST", "HTTP_HOST": "chat.example.org"}
    head, _, body = newemail.handle(config, env).partition("\n\n")
    status = "200"
    for line in head.splitlines():
        if line.startswith("Status: "):
            status = line.split()[1]
    return status, json.loads(body)


def test_credentials_when_creation_is_allowed(newemail, chatmaild_config, tmp_path):
    from chatmaild.doveauth import creation_refusal

    path = ini(tmp_path, max_load_1m=100000)
    status, body = post(newemail, chatmaild_config, path)
    assert status == "200"
    config = chatmaild_config.read_config(path)
    assert creation_refusal(config, body["email"], body["password"]) is None


def test_kill_switch_answers_503(newemail, chatmaild_config, tmp_path):
    path = ini(tmp_path, max_load_1m=100000)
    (tmp_path / "nocreate").touch()
    status, body = post(newemail, chatmaild_config, path)
    assert status == "503"
    assert body == {"error": newemail.DISABLED}


def test_resource_brake_answers_503(newemail, chatmaild_config, tmp_path):
    # more free memory required than any machine has
    path = ini(tmp_path, max_load_1m=100000, min_available_memory="1000000G")
    status, body = post(newemail, chatmaild_config, path)
    assert status == "503"
    assert body == {"error": newemail.BUSY}

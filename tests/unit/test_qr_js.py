"""The pages' QR code encoder (salt/chatmail/nginx/files/qr.js), run in
headless Chromium, against zbarimg as the reader: texts of every length from
one byte to the largest QR code (versions 1 to 40, so every row of the
error-correction table and the version information), UTF-8, a dclogin: URL,
and the <svg> the page draws, from a screenshot.

Needs chromium-headless-shell (or chromium) and zbar-tools, which ./cmsalt
installs; skipped where they are missing (a developer machine).
"""

import json
from pathlib import Path

import pytest

from tests.harness import browser

REPO = Path(__file__).resolve().parents[2]
QR_JS = REPO / "salt" / "chatmail" / "nginx" / "files" / "qr.js"

pytestmark = pytest.mark.skipif(
    bool(browser.missing_tools()),
    reason="needs " + " and ".join(browser.missing_tools()) + " (./cmsalt installs them)",
)

# byte counts at and around the version limits of level M
LENGTHS = [1, 14, 15, 26, 42, 62, 84, 106, 122, 152, 180, 213, 251, 287, 331, 362]
LENGTHS += [412, 450, 504, 560, 624, 666, 711, 779, 857, 911, 997, 1059, 1125, 1190]
LENGTHS += [1264, 1370, 1452, 1538, 1628, 1722, 1809, 1911, 1989, 2099, 2213, 2331]
DCLOGIN = (
    "dclogin:k3v9q2m7x@[192.0.2.7]?p=Zq8PwX3rT6yLm2Nb5Vc1&v=1&ih=192.0.2.7&ip=993"
    "&is=ssl&ic=3&sh=192.0.2.7&sp=465&ss=ssl&sc=3"
)


def text_of(length):
    return "".join(chr(33 + (i * 7 + length) % 90) for i in range(length))


@pytest.fixture(scope="module")
def web():
    with browser.browser() as b:
        yield b


def page(tmp_path, body=""):
    html = tmp_path / "qr.html"
    html.write_text(
        f'<!DOCTYPE html><html><head><script src="{QR_JS.as_uri()}"></script></head>'
        f'<body style="margin:0;background:#fff">{body}</body></html>'
    )
    return html.as_uri()


def test_every_version_decodes(web, tmp_path):
    texts = [text_of(n) for n in LENGTHS] + [DCLOGIN, "Grüße ✓ DCACCOUNT:https://_x.test/new"]
    expr = f"JSON.stringify({json.dumps(texts)}.map(t => chatmailQR.matrix(t)))"
    cap = web.capture(page(tmp_path), probes={"matrices": expr})
    matrices = json.loads(cap.values["matrices"])
    versions = [(len(m) - 17) // 4 for m in matrices]
    # the smallest version that fits: the lengths above step through all 40
    assert sorted(set(versions[: len(LENGTHS)])) == list(range(1, 41))
    for text, matrix in zip(texts, matrices, strict=True):
        got = browser.decode_qr(browser.matrix_png(matrix))
        assert got == [text], (len(text.encode()), (len(matrix) - 17) // 4)


def test_too_long_text_is_refused(web, tmp_path):
    expr = "(() => { try { chatmailQR.matrix('x'.repeat(2332)); return 'made'; }"
    expr += " catch (e) { return e.message; } })()"
    cap = web.capture(page(tmp_path), probes={"result": expr})
    assert cap.values["result"] == "too long for a QR code"


def test_svg_on_screen_decodes(web, tmp_path):
    """chatmailQR.svg as the page uses it, in a box of 320 px (the size the
    page's style sheet gives it is similar), read from a screenshot."""
    draw = f"document.getElementById('box').append(chatmailQR.svg({json.dumps(DCLOGIN)}))"
    body = (
        "<style>svg{width:100%;height:100%}</style>"
        '<div id="box" style="width:320px;height:320px"></div>'
        f"<script>{draw}</script>"
    )
    cap = web.capture(page(tmp_path, body))
    assert browser.decode_qr(cap.png) == [DCLOGIN]

"""The relay's web pages in a real browser: headless Chromium driven over the
DevTools protocol, and the QR code on a screenshot decoded by zbarimg.

Chromium (Debian's ``chromium-headless-shell``, or ``chromium``) and
``zbarimg`` (``zbar-tools``) run on the machine running the tests, which
reaches the test hosts directly; test domain names are mapped to a host's
address with ``--host-resolver-rules`` and the test certificates accepted
with ``--ignore-certificate-errors``.  ./cmsalt installs both packages.

The protocol goes over the WebSocket client of aiohttp, which Salt already
brings into the test venv.
"""

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

BROWSERS = ("chromium-headless-shell", "chromium")
WIDTH, HEIGHT = 1280, 1400


def chromium():
    """Path of the headless Chromium binary, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def missing_tools():
    """What the browser checks need and this machine lacks (Debian packages)."""
    missing = []
    if not chromium():
        missing.append("chromium-headless-shell")
    if not shutil.which("zbarimg"):
        missing.append("zbar-tools")
    return missing


@dataclass
class Capture:
    url: str
    png: bytes
    html: str
    # what the page shows as the account link (#account-link), "" if none
    link: str
    # what the page reports as an error (#account-error when shown), "" if none
    error: str
    # {name: value} of the JavaScript expressions passed as probes
    values: dict


class PageError(Exception):
    pass


class _Session:
    """One DevTools WebSocket session to a page target."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.events = []

    async def call(self, method, timeout=30, **params):
        self.next_id += 1
        msg_id = self.next_id
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"DevTools {method}: no answer in {timeout} s")
            msg = json.loads(await self.ws.receive_str(timeout=left))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise PageError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    async def wait_event(self, method, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method:
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} event in {timeout} s")
            msg = json.loads(await self.ws.receive_str(timeout=left))
            if "method" in msg:
                self.events.append(msg)

    async def evaluate(self, expression, timeout=30):
        result = await self.call(
            "Runtime.evaluate",
            timeout=timeout,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise PageError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_until(self, expression, timeout=30):
        deadline = time.monotonic() + timeout
        while not await self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never got to: {expression}")
            await asyncio.sleep(0.2)


class Browser:
    """A headless Chromium for the duration of a ``with`` block.

    resolve: {host name: IPv4} for names the machine's resolver does not know.
    """

    def __init__(self, resolve=None):
        binary = chromium()
        if not binary:
            raise RuntimeError("no headless Chromium: apt-get install chromium-headless-shell")
        self.profile = Path(tempfile.mkdtemp(prefix="cmsalt-chromium-"))
        argv = [
            binary,
            "--headless",
            "--no-sandbox",  # runs as root on the CI machine
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--ignore-certificate-errors",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-port=0",
        ]
        if resolve:
            rules = ",".join(f"MAP {name} {ip}" for name, ip in resolve.items())
            argv.append(f"--host-resolver-rules={rules}")
        argv.append("about:blank")
        # its own process group: Debian's /usr/bin/chromium* are shell scripts
        # running the browser as a child, which outlives a terminated script
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.port = self._devtools_port()

    def _devtools_port(self, timeout=60):
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("chromium exited: " + self.proc.stderr.read().decode()[-2000:])
            if marker.exists():
                first = marker.read_text().split("\n", 1)[0].strip()
                if first.isdigit():
                    return int(first)
            time.sleep(0.1)
        raise TimeoutError(f"chromium wrote no {marker} in {timeout} s")

    def _group_alive(self):
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def close(self):
        """End the browser and every process it started (its process group)."""
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            if not self._group_alive():
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            deadline = time.monotonic() + grace
            while self._group_alive() and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.2)
        self.proc.wait()
        self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def capture(self, url, click=None, done=None, probes=None, timeout=60):
        """Load url in a fresh tab; optionally click the element matching CSS
        selector `click` and wait until JavaScript expression `done` is true;
        then a screenshot of the whole page, what it shows and the values of
        the JavaScript expressions in `probes` ({name: expression})."""
        return asyncio.run(self._capture(url, click, done, probes or {}, timeout))

    async def _capture(self, url, click, done, probes, timeout):
        import aiohttp

        base = f"http://127.0.0.1:{self.port}"
        async with aiohttp.ClientSession() as http:
            async with http.put(f"{base}/json/new?about:blank") as resp:
                target = await resp.json(content_type=None)
            try:
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = _Session(ws)
                    await page.call("Page.enable")
                    await page.call(
                        "Emulation.setDeviceMetricsOverride",
                        width=WIDTH,
                        height=HEIGHT,
                        deviceScaleFactor=1,
                        mobile=False,
                    )
                    nav = await page.call("Page.navigate", url=url)
                    if nav.get("errorText"):
                        raise PageError(f"{url}: {nav['errorText']}")
                    await page.wait_event("Page.loadEventFired", timeout=timeout)
                    if click:
                        await page.evaluate(f"document.querySelector({json.dumps(click)}).click()")
                    if done:
                        await page.wait_until(done, timeout=timeout)
                    shot = await page.call(
                        "Page.captureScreenshot", format="png", captureBeyondViewport=True
                    )
                    html = await page.evaluate("document.documentElement.outerHTML")
                    link = await page.evaluate(
                        "(document.getElementById('account-link') || {}).textContent || ''"
                    )
                    error = await page.evaluate(
                        "(e => e && !e.hidden ? e.textContent : '')"
                        "(document.getElementById('account-error'))"
                    )
                    values = {name: await page.evaluate(e) for name, e in probes.items()}
            finally:
                async with http.get(f"{base}/json/close/{target['id']}") as resp:
                    await resp.read()
        return Capture(url, base64.b64decode(shot["data"]), html, link, error, values)


# the page's "Create account" is done: the account or an error is shown
ACCOUNT_SHOWN = (
    "!document.getElementById('account').hidden || !document.getElementById('account-error').hidden"
)
# the page's own style sheet is applied (chatmail.css: --bg of the light scheme)
STYLED = "getComputedStyle(document.body).backgroundColor"
STYLED_VALUE = "rgb(246, 247, 249)"


def create_account(b, url, attempts=4, probes=None):
    """Press "Create account" on the home page at url; retried while the relay
    answers "try again" (its /new rate limit per client, which other tests
    from this machine share).  The Capture shows the account's login link."""
    for _ in range(attempts):
        cap = b.capture(url, click="#new", done=ACCOUNT_SHOWN, probes=probes)
        if cap.link or "try again" not in cap.error:
            return cap
        time.sleep(4)
    return cap


def decode_qr(png):
    """The texts of the QR codes zbarimg finds in a PNG image (bytes)."""
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        f.write(png)
        f.flush()
        proc = subprocess.run(
            ["zbarimg", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", f.name],
            capture_output=True,
            timeout=60,
        )
    # 4: nothing found
    if proc.returncode not in (0, 4):
        raise RuntimeError(f"zbarimg failed ({proc.returncode}): {proc.stderr.decode()}")
    return [line for line in proc.stdout.decode("utf-8", "replace").splitlines() if line]


def matrix_png(matrix, scale=4, quiet=4):
    """A greyscale PNG (bytes) of a QR matrix (rows of booleans, True = dark)
    with a quiet zone of `quiet` modules, `scale` pixels a module."""
    n = len(matrix) + 2 * quiet
    rows = []
    for y in range(n):
        my = y - quiet
        row = bytearray()
        for x in range(n):
            mx = x - quiet
            dark = 0 <= my < len(matrix) and 0 <= mx < len(matrix) and matrix[my][mx]
            row += bytes([0 if dark else 255]) * scale
        rows += [b"\0" + bytes(row)] * scale

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    size = n * scale
    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


@contextlib.contextmanager
def browser(resolve=None):
    b = Browser(resolve)
    try:
        yield b
    finally:
        b.close()

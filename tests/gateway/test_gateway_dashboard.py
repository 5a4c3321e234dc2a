"""The dashboard renders real data: ``/dashboard`` and the data it polls (``/status``), against
the embedded simulated fleet of ``vcp serve`` with no config, with and without an admin token.

The URLs and the fields the page reads are parsed out of its script, so the tests break when
the page and the endpoint drift apart. When Debian's ``chromium`` is installed, headless
Chromium driven over the DevTools protocol renders the page for real: the fleet's rows appear
without any token, the token is asked for at most once, and a refused token stops the polling.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.gateway.conftest import CHAT, eventually

from vllm_control_plane.config import ControlPlaneConfig, default_config, parse_config
from vllm_control_plane.gateway import Gateway, GatewayServer

TOKEN = "dash-admin-token-4e1b"
EMBEDDED = {"h100-llama70b-tp4", "a100-llama70b-tp2pp2", "l4-llama8b"}  # default_config()


def _embedded(monkeypatch: pytest.MonkeyPatch, token: str | None) -> ControlPlaneConfig:
    """``vcp serve`` with no config; the admin token (if any) from VCP_ADMIN_TOKEN, as there."""
    if token is None:
        monkeypatch.delenv("VCP_ADMIN_TOKEN", raising=False)
    else:
        monkeypatch.setenv("VCP_ADMIN_TOKEN", token)
    return default_config()


@contextlib.asynccontextmanager
async def _serve(config: ControlPlaneConfig) -> AsyncIterator[GatewayServer]:
    async with GatewayServer(Gateway(config), host="127.0.0.1", port=0) as server:
        cp = server.gateway.cp
        await eventually(lambda: cp.get_status()["available_instances"] == len(cp.get_instances()),
                         what="every instance in rotation")  # fmt: skip
        yield server


def _script(page: str) -> str:
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 1, "the page has one inline script"
    return scripts[0]


def _data_urls(script: str) -> set[str]:
    """Every absolute path the script names (string literals): what the page will fetch."""
    return set(re.findall(r"""["'`](/[A-Za-z0-9_./-]*)["'`]""", script))


def _fields_read(script: str) -> set[tuple[str, ...]]:
    """The fields ``render(s)`` reads from the status document, as key paths; ``("instances",
    "*", f)`` for every instance's ``f``. Aliases (``const p = s.policy``) are followed."""
    body = re.search(r"function render\(s\) \{(.*?)\n\}", script, re.S)
    assert body, "the page renders through render(s)"
    code = body.group(1)
    aliases = {a: (f,) for a, f in re.findall(r"\b([a-z]) = s\.(\w+)", code)}
    aliases["i"] = ("instances", "*")  # s.instances.map((i) => ...)
    assert "s.instances.map((i)" in code
    fields: set[tuple[str, ...]] = set()
    for a, f, g in re.findall(r"(?<![\w.])([a-z])\.(\w+)(?:\.(\w+))?", code):
        if a == "s":
            fields.add((f, g) if g and g not in {"map", "join", "length"} else (f,))
        elif a in aliases:
            fields.add((*aliases[a], f))
    return fields


def _missing(doc: dict[str, Any], fields: set[tuple[str, ...]]) -> list[tuple[str, ...]]:
    def has(node: Any, path: tuple[str, ...]) -> bool:
        if not path:
            return True
        if path[0] == "*":
            return bool(node) and all(has(item, path[1:]) for item in node)
        return isinstance(node, dict) and path[0] in node and has(node[path[0]], path[1:])

    return sorted(p for p in fields if not has(doc, p))


async def _page_and_data(http: aiohttp.ClientSession, url: str, **kw: Any):
    async with http.get(url + "/dashboard") as r:
        assert r.status == 200 and r.content_type == "text/html"
        script = _script(await r.text())
    urls = _data_urls(script)
    assert urls == {"/status"}, urls  # the admin API is not what the page reads
    answers = {}
    for path in urls:
        async with http.get(url + path, **kw) as r:
            answers[path] = (r.status, await r.json(content_type=None), r.headers)
    return script, answers


async def test_dashboard_data_is_open_without_an_admin_token(http, monkeypatch) -> None:
    async with _serve(_embedded(monkeypatch, None)) as gw:
        body = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 4}
        for _ in range(2):
            async with http.post(gw.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200
        script, answers = await _page_and_data(http, gw.url)
    status, doc, headers = answers["/status"]
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert not _missing(doc, _fields_read(script)), _missing(doc, _fields_read(script))
    assert {i["instance_id"] for i in doc["instances"]} == EMBEDDED
    assert all(i["is_healthy"] and i["simulated"] for i in doc["instances"])
    assert doc["fleet"]["models"] == ["llama-3-70b", "llama-3-8b"]
    assert doc["counters"]["completed"] == 2 and doc["counters"]["in_flight"] == 0
    assert doc["metrics"]["p50_latency_ms"] > 0
    assert doc["gateway"]["admin_api"] is False


async def test_dashboard_data_needs_the_admin_token_when_one_is_set(http, monkeypatch) -> None:
    async with _serve(_embedded(monkeypatch, TOKEN)) as gw:
        script, answers = await _page_and_data(http, gw.url)  # the page itself stays open
        status, doc, headers = answers["/status"]
        assert status == 401 and doc["error"]["code"] == "invalid_api_key"
        # Bearer only: a refused fetch() must not make the browser pop its own login dialog
        assert "Basic" not in headers["WWW-Authenticate"]
        for bad in ({"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with http.get(gw.url + "/status", headers=bad) as r:
                assert r.status == 401
        basic = base64.b64encode(f"me:{TOKEN}".encode()).decode()
        for good in ({"Authorization": f"Bearer {TOKEN}"}, {"Authorization": f"Basic {basic}"}):
            _, answers = await _page_and_data(http, gw.url, headers=good)
            status, doc, _ = answers["/status"]
            assert status == 200, good
            assert not _missing(doc, _fields_read(script))
            assert {i["instance_id"] for i in doc["instances"]} == EMBEDDED
            assert doc["gateway"]["admin_api"] is True


async def test_protected_pages_pass_their_login_on_to_the_data(http) -> None:
    config = parse_config({"admin": {"token": TOKEN, "protect_pages": True},
                           "simulated": [{"name": "one", "model": "llama-3-8b"}]})  # fmt: skip
    basic = {"Authorization": "Basic " + base64.b64encode(f"u:{TOKEN}".encode()).decode()}
    async with _serve(config) as gw:
        async with http.get(gw.url + "/dashboard") as r:
            assert r.status == 401
        async with http.get(gw.url + "/dashboard", headers=basic) as r:
            assert r.status == 200
        async with http.get(gw.url + "/status", headers=basic) as r:
            assert r.status == 200 and (await r.json())["instances"][0]["instance_id"] == "one"


# ---------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                    "(Debian: apt-get install chromium)")  # fmt: skip


class _Page:
    """One Chromium tab over the DevTools protocol: navigate, evaluate, answer dialogs."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.dialogs: list[str] = []
        self.prompt_answer: str | None = None  # None: dismiss the prompt (Cancel)
        self._ids = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = msg.json()
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            elif data.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(data["params"]["message"])
                answer = self.prompt_answer
                params = {"accept": answer is not None, "promptText": answer or ""}
                await self._send("Page.handleJavaScriptDialog", params)

    async def _send(self, method: str, params: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        self._ids += 1
        fut = self._pending[self._ids] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": self._ids, "method": method, "params": params})
        return fut

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        reply = await asyncio.wait_for(await self._send(method, params), 30)
        assert "error" not in reply, reply
        return reply["result"]

    async def js(self, expression: str) -> Any:
        out = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return out["result"].get("value")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


# Before the page's own script: keep the ids of its pending timers, so a test can tell that
# the page has nothing left scheduled (it cannot poll again) without waiting to see.
_TIMER_PROBE = """
window.__pending = new Set();
const realSetTimeout = window.setTimeout;
window.setTimeout = (fn, ms, ...args) => {
  const id = realSetTimeout(() => { window.__pending.delete(id); fn(...args); }, ms);
  window.__pending.add(id);
  return id;
};
window.setInterval = () => { throw new Error("the dashboard polls with setTimeout"); };
"""


@contextlib.asynccontextmanager
async def _chromium(http: aiohttp.ClientSession, profile: Path) -> AsyncIterator[_Page]:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    drain: asyncio.Task[None] | None = None
    page: _Page | None = None
    try:
        while True:  # Chromium names its DevTools port on stderr
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert line, "chromium exited before opening DevTools"
            found = re.search(rb"DevTools listening on ws://([\d.]+:\d+)/", line)
            if found:
                break

        async def _drain(stream: asyncio.StreamReader) -> None:
            while await stream.readline():
                pass

        drain = asyncio.create_task(_drain(proc.stderr))
        async with http.get(f"http://{found.group(1).decode()}/json/list") as r:
            targets = [t for t in await r.json() if t["type"] == "page"]
        ws = await http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0)
        page = _Page(ws)
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        await page.call("Page.addScriptToEvaluateOnNewDocument", source=_TIMER_PROBE)
        yield page
    finally:
        if page is not None:
            await page.close()
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        if drain is not None:
            await drain


def _count_status_reads(gw: GatewayServer) -> list[str | None]:
    """Record the credential of every ``/status`` request the gateway answers."""
    seen: list[str | None] = []
    auth = gw.gateway.auth
    check = auth.check_status

    def counting(headers: Any) -> None:
        seen.append(headers.get("Authorization"))
        check(headers)

    auth.check_status = counting  # type: ignore[method-assign]
    return seen


async def _open(page: _Page, url: str) -> None:
    await page.call("Page.navigate", url=url)


async def _rows(page: _Page) -> list[str]:
    return await page.js("[...document.querySelectorAll('tr.instance td:first-child')]"
                         ".map((td) => td.textContent)") or []  # fmt: skip


@needs_chromium
async def test_chromium_renders_the_embedded_fleet_without_a_token(
    http, monkeypatch, tmp_path
) -> None:
    async with _serve(_embedded(monkeypatch, None)) as gw, _chromium(http, tmp_path) as page:
        reads = _count_status_reads(gw)
        await _open(page, gw.url + "/dashboard")

        async def three_rows() -> bool:
            return len(await _rows(page)) == 3

        await eventually(three_rows, timeout=30, what="the fleet's rows")
        assert {r.removesuffix(" (sim)") for r in await _rows(page)} == EMBEDDED
        assert "strategy predictive" in await page.js("document.getElementById('policy')"
                                                      ".textContent")  # fmt: skip
        assert await page.js("document.getElementById('err').textContent") == ""
        before = len(reads)
        await eventually(lambda: len(reads) >= before + 2, what="it keeps polling")
        assert page.dialogs == [] and set(reads) == {None}  # never asked, never sent a token


@needs_chromium
async def test_chromium_asks_for_the_token_once_and_stops_when_refused(
    http, monkeypatch, tmp_path
) -> None:
    async with _serve(_embedded(monkeypatch, TOKEN)) as gw, _chromium(http, tmp_path) as page:
        reads = _count_status_reads(gw)
        page.prompt_answer = "not-the-token"
        await _open(page, gw.url + "/dashboard")

        async def refused() -> bool:
            text = await page.js("document.getElementById('err').textContent") or ""
            return "Polling stopped" in text

        await eventually(refused, timeout=30, what="the refusal on the page")
        assert len(page.dialogs) == 1  # one prompt, not one per fetch or per second
        assert reads == [None, "Bearer not-the-token"]
        assert await page.js("window.__pending.size") == 0  # polling stopped: nothing scheduled
        assert await _rows(page) == []
        assert len(page.dialogs) == 1 and len(reads) == 2


@needs_chromium
async def test_chromium_renders_the_fleet_with_the_right_token(http, monkeypatch, tmp_path) -> None:
    async with _serve(_embedded(monkeypatch, TOKEN)) as gw, _chromium(http, tmp_path) as page:
        reads = _count_status_reads(gw)
        page.prompt_answer = TOKEN
        await _open(page, gw.url + "/dashboard")

        async def three_rows() -> bool:
            return len(await _rows(page)) == 3

        await eventually(three_rows, timeout=30, what="the fleet's rows")
        assert {r.removesuffix(" (sim)") for r in await _rows(page)} == EMBEDDED
        assert await page.js("sessionStorage.getItem('vcpAdminToken')") == TOKEN
        before = len(reads)
        await eventually(lambda: len(reads) >= before + 2, what="it keeps polling")
        assert len(page.dialogs) == 1  # asked once, then the kept token serves every read
        assert reads[0] is None and set(reads[1:]) == {f"Bearer {TOKEN}"}


@needs_chromium
async def test_chromium_carries_a_protected_pages_login_over_to_the_data(http, tmp_path) -> None:
    config = parse_config({"admin": {"token": TOKEN, "protect_pages": True},
                           "simulated": [{"name": "one", "model": "llama-3-8b"}]})  # fmt: skip
    async with _serve(config) as gw, _chromium(http, tmp_path) as page:
        reads = _count_status_reads(gw)
        await _open(page, gw.url.replace("http://", f"http://me:{TOKEN}@") + "/dashboard")

        async def one_row() -> bool:
            return await _rows(page) == ["one (sim)"]

        await eventually(one_row, timeout=30, what="the instance's row")
        assert page.dialogs == []  # the browser's Basic login served the data too
        basic = "Basic " + base64.b64encode(f"me:{TOKEN}".encode()).decode()
        assert reads and set(reads) == {basic}

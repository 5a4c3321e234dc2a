"""Security properties of the gateway, checked from outside: the admin token, tenant API keys,
the body size limit, what reaches the logs, that client headers cannot claim another tenant's
identity or privileges, and the optional protection of ``/metrics``, ``/openapi.json`` and
``/dashboard``."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from vllm_control_plane.config import ConfigError, parse_config
from vllm_control_plane.gateway import Gateway, GatewayServer
from vllm_control_plane.gateway import auth as auth_module
from vllm_control_plane.gateway.protocol import RedactParserErrors, install_log_redaction

ADMIN = "admin-secret-token-9f2c"
KEY_ACME = "sk-acme-5b1e"
KEY_GLOBEX = "sk-globex-77aa"
PROMPT = "my very private prompt text 1234"


def _config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "admin": {"token": ADMIN},
        "server": {"max_body_bytes": 4096},
        "monitor": {"health_interval_s": 0.05, "scrape_interval_s": 0.05},
        "tenants": [
            {"name": "acme", "api_keys": [KEY_ACME], "max_priority": "normal",
             "cost_budget": 0.01},
            {"name": "globex", "api_keys": [KEY_GLOBEX]},
        ],
        "simulated": [{"name": "one", "model": "llama-3-8b", "time_scale": 0.02,
                       "mean_output_tokens": 8.0}],
    }  # fmt: skip
    base.update(overrides)
    return base


@pytest.fixture
async def gw(no_task_leaks: None) -> AsyncIterator[GatewayServer]:
    server = GatewayServer(Gateway(parse_config(_config())), port=0)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _chat(http, url: str, headers: dict[str, str], content: str = PROMPT):
    body = {"model": "llama-3-8b", "max_tokens": 3,
            "messages": [{"role": "user", "content": content}]}  # fmt: skip
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("path", ["/admin/status", "/admin/instances", "/admin/config"])
async def test_admin_api_requires_its_token(gw, http, path: str) -> None:
    for headers in ({}, _bearer("wrong"), _bearer(KEY_ACME), {"Authorization": ADMIN}):
        async with http.get(gw.url + path, headers=headers) as r:
            assert r.status == 401, headers
    async with http.get(gw.url + path, headers=_bearer(ADMIN)) as r:
        assert r.status == 200


async def test_admin_mutations_are_refused_without_the_token(gw, http) -> None:
    async with http.delete(gw.url + "/admin/instances/one") as r:
        assert r.status == 401
    async with http.put(gw.url + "/admin/policy", json={"scheduling_policy": "fifo"}) as r:
        assert r.status == 401
    assert [i.instance_id for i in gw.gateway.cp.get_instances()] == ["one"]


async def test_admin_api_is_off_without_a_configured_token(http, monkeypatch) -> None:
    monkeypatch.delenv("VCP_ADMIN_TOKEN", raising=False)
    server = GatewayServer(Gateway(parse_config(_config(admin={}))), port=0)
    await server.start()
    try:
        async with http.get(server.url + "/admin/status", headers=_bearer("")) as r:
            assert r.status == 403
    finally:
        await server.close()


def test_admin_token_is_compared_in_constant_time(monkeypatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = auth_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    authn = auth_module.Authenticator(parse_config(_config()))
    authn.check_admin(_bearer(ADMIN))
    with pytest.raises(Exception, match="admin token"):
        authn.check_admin(_bearer("x" * len(ADMIN)))
    assert len(calls) == 2  # every check, good or bad, went through compare_digest


async def test_tenant_keys_are_required_and_checked(gw, http) -> None:
    assert (await _chat(http, gw.url, {}))[0] == 401
    assert (await _chat(http, gw.url, _bearer("sk-nope")))[0] == 401
    assert (await _chat(http, gw.url, _bearer(ADMIN)))[0] == 401  # admin token is no API key
    async with http.get(gw.url + "/v1/models") as r:
        assert r.status == 401
    assert (await _chat(http, gw.url, _bearer(KEY_ACME)))[0] == 200


async def test_headers_cannot_claim_another_tenant_or_more_privilege(gw, http) -> None:
    forged = {
        **_bearer(KEY_ACME),
        "X-Tenant": "globex",
        "X-Tenant-Id": "globex",
        "X-Api-Key": KEY_GLOBEX,
        "X-Priority": "critical",
        "X-Cost-Budget": "1000",
        "X-Request-Id": "forged-1",
    }
    status, _ = await _chat(http, gw.url, forged)
    assert status == 200
    meta = gw.gateway.cp.core.record("acme/forged-1").request  # ids live in the key's tenant
    assert meta.tenant == "acme"
    assert meta.priority.name == "NORMAL"  # capped at acme's max_priority
    assert meta.cost_budget == 0.01  # a header may lower the tenant's budget, not raise it
    # a second Authorization header does not switch tenants either: the first one counts
    body = {"model": "llama-3-8b", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    twice = [
        ("Authorization", f"Bearer {KEY_ACME}"),
        ("Authorization", f"Bearer {KEY_GLOBEX}"),
        ("X-Request-Id", "forged-2"),
    ]
    async with http.post(gw.url + "/v1/chat/completions", json=body, headers=twice) as r:
        assert r.status == 200
    assert gw.gateway.cp.core.record("acme/forged-2").request.tenant == "acme"


async def test_user_fields_are_labels_never_a_tenant(gw, http) -> None:
    core = gw.gateway.cp.core
    body = {"model": "llama-3-8b", "max_tokens": 2, "user": "globex",
            "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
    for i, extra in enumerate(({}, {"X-User-Id": "globex"}, {"X-User-Id": "globex/admin"})):
        headers = {**_bearer(KEY_ACME), "X-Request-Id": f"globex/u-{i}", **extra}
        async with http.post(gw.url + "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200 and r.headers["X-Request-Id"] == f"globex/u-{i}"
        rec = core.record(f"acme/globex/u-{i}")  # still in acme's namespace
        assert rec.request.tenant == "acme"
        assert rec.request.user_id == extra.get("X-User-Id", "globex")
        with pytest.raises(KeyError):
            core.record(f"globex/u-{i}")  # nothing landed in globex's namespace
    # a user label naming the other tenant leaves acme's own limits and budget in force
    assert rec.request.cost_budget == 0.01 and rec.request.priority.name == "NORMAL"


@pytest.mark.parametrize("chunked", [False, True])
async def test_request_body_size_is_limited(gw, http, chunked: bool) -> None:
    big = b'{"model":"llama-3-8b","prompt":"' + b"a" * 10_000 + b'","max_tokens":1}'

    async def gen():  # type: ignore[no-untyped-def]
        yield big

    data = gen() if chunked else big
    headers = {**_bearer(KEY_ACME), "Content-Type": "application/json"}
    async with http.post(gw.url + "/v1/completions", data=data, headers=headers) as r:
        assert r.status == 413
        assert orjson.loads(await r.read())["error"]["code"] == "body_too_large"
    assert gw.gateway.cp.core.counters().submitted == 0


async def test_logs_carry_no_secrets_or_prompt_text(gw, http, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # the most a deployment could turn on
    await _chat(http, gw.url, _bearer(KEY_ACME))
    await _chat(http, gw.url, _bearer("sk-wrong-key-123"))
    await _chat(http, gw.url, {**_bearer(KEY_GLOBEX), "X-Priority": "bogus"})
    async with http.get(gw.url + "/admin/status", headers=_bearer("bad-admin-guess")) as r:
        assert r.status == 401
    sim = gw.gateway.fleet.server("one")
    sim.set_faults(error_rate=1.0)  # engine errors are logged paths too
    await _chat(http, gw.url, _bearer(KEY_ACME))
    sim.set_faults(error_rate=0.0)
    text = _logged(caplog)  # messages and any traceback, as a handler would print them
    for secret in (ADMIN, KEY_ACME, KEY_GLOBEX, "sk-wrong-key-123", "bad-admin-guess", PROMPT):
        assert secret not in text


# Requests aiohttp's parser refuses before any handler runs: its default answer is a plain-text
# 400 quoting the offending line, and its log line (ERROR, "Error handling request") the same.
MALFORMED = {
    "key-with-control-byte": b"Authorization: Bearer " + KEY_ACME.encode() + b"\x01",
    "admin-token-with-nul": b"Authorization: Bearer " + ADMIN.encode() + b"\x00",
    "bare-lf-after-key": b"Authorization: Bearer " + KEY_GLOBEX.encode() + b"\nX-Other: y",
    "key-in-a-bad-header-name": b"X Api Key: " + KEY_ACME.encode(),
    "key-in-an-overlong-header": b"Authorization: Bearer " + KEY_ACME.encode() + b"k" * 9000,
    "obsolete-line-folding": b"Authorization: Bearer\r\n " + ADMIN.encode(),
}
NOT_UTF8 = b"Authorization: Bearer \xff" + ADMIN.encode()  # parses, but is no valid credential


async def _raw(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a request head over a plain TCP connection; the status, headers and body back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # the server closes after an error
    finally:
        writer.close()
        await writer.wait_closed()
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    return int(status_line.split()[1]), headers, body


def _request(path: str, header: bytes) -> bytes:
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header +
            b"\r\nConnection: close\r\n\r\n")  # fmt: skip


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the captured records would print: messages, arguments and tracebacks."""
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)


SECRETS = (ADMIN, KEY_ACME, KEY_GLOBEX)


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("path", ["/v1/models", "/admin/status"])
async def test_malformed_headers_get_the_envelope_and_leak_no_secret(
    gw, caplog, case: str, path: str
) -> None:
    caplog.set_level(logging.DEBUG)
    status, headers, body = await _raw(gw.port, _request(path, MALFORMED[case]))
    assert status == 400 and headers["content-type"].startswith("application/json")
    error = orjson.loads(body)["error"]
    assert error["type"] == "BadRequestError" and error["code"] == "invalid_request_error"
    assert error["message"].startswith("Malformed HTTP request: ")
    logged = _logged(caplog)
    assert "bad HTTP request from 127.0.0.1" in logged  # the refusal is still visible
    assert "Error handling request" not in logged  # aiohttp's ERROR line with the exception
    for secret in SECRETS:
        assert secret.encode() not in body, "the answer echoes a secret"
        assert secret not in logged, "a secret reached the logs"
    assert gw.gateway.cp.core.counters().submitted == 0


async def test_a_credential_that_is_not_utf8_is_refused_not_a_500(gw, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    for path in ("/admin/status", "/v1/models", "/status"):
        status, _, body = await _raw(gw.port, _request(path, NOT_UTF8))
        assert status == 401, path
        assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert all(secret not in _logged(caplog) for secret in SECRETS)


async def test_parser_errors_of_other_aiohttp_servers_are_redacted(gw, caplog) -> None:
    """The embedded simulators are plain aiohttp servers: their parser errors are logged by
    aiohttp (at ERROR) through the redacting filter, without the quoted bytes."""
    caplog.set_level(logging.DEBUG)
    sim = gw.gateway.fleet.server("one")
    request = _request("/v1/models", MALFORMED["key-with-control-byte"])
    status, _, _ = await _raw(sim.port, request)
    assert status == 400
    logged = _logged(caplog)
    assert "Error handling request" in logged and "bytes withheld" in logged
    assert KEY_ACME not in logged


def test_redaction_filter_is_installed_once_and_keeps_other_records(caplog) -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    install_log_redaction()
    install_log_redaction()
    logger = logging.getLogger("aiohttp.server")
    assert sum(isinstance(f, RedactParserErrors) for f in logger.filters) == 1
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    try:
        raise BadHttpMessage(f"Invalid header value char:\n\n  b'Bearer {KEY_ACME}\\x01'")
    except BadHttpMessage:
        logger.exception("Error handling request from %s", "10.0.0.1")
    try:
        raise ValueError("an ordinary bug")
    except ValueError:
        logger.exception("Unhandled exception")
    first, second = caplog.records[-2:]
    assert first.getMessage() == ("Error handling request from 10.0.0.1 (BadHttpMessage: "
                                  "Invalid header value char; bytes withheld)")  # fmt: skip
    assert first.exc_info is None and KEY_ACME not in _logged(caplog)
    assert second.exc_info is not None  # other errors keep their traceback


async def test_status_view_holds_no_secrets(gw, http) -> None:
    assert (await _chat(http, gw.url, _bearer(KEY_ACME)))[0] == 200
    async with http.get(gw.url + "/status", headers=_bearer(ADMIN)) as r:
        assert r.status == 200
        body = await r.read()
    assert orjson.loads(body)["counters"]["completed"] == 1
    sim_url = gw.gateway.fleet.server("one").url
    for secret in (*SECRETS, PROMPT, "acme", "globex", sim_url, "sk-"):
        assert secret.encode() not in body, secret


async def test_config_views_do_not_reveal_secrets(gw, http) -> None:
    async with http.get(gw.url + "/admin/config", headers=_bearer(ADMIN)) as r:
        body = await r.read()
    for secret in (ADMIN, KEY_ACME, KEY_GLOBEX):
        assert secret.encode() not in body
        assert secret not in repr(gw.gateway.config)


# ---------------------------------------------------------------- /metrics and the pages

METRICS_TOKEN = "metrics-scraper-31d7"
PAGES = ("/openapi.json", "/dashboard")


def _basic(password: str, user: str = "any") -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def _status(http, url: str, headers: dict[str, str] | None = None) -> int:
    async with http.get(url, headers=headers or {}) as r:
        if r.status == 401:
            assert (await r.json())["error"]["code"] == "invalid_api_key"
            assert "Basic" in r.headers["WWW-Authenticate"]  # a browser can prompt for it
        return r.status


async def test_metrics_and_pages_are_open_by_default(gw, http) -> None:
    for path in ("/metrics", *PAGES):
        assert await _status(http, gw.url + path) == 200


@pytest.fixture
async def guarded(no_task_leaks: None) -> AsyncIterator[GatewayServer]:
    admin = {"token": ADMIN, "metrics_token": METRICS_TOKEN, "protect_metrics": True,
             "protect_pages": True}  # fmt: skip
    server = GatewayServer(Gateway(parse_config(_config(admin=admin))), port=0)
    await server.start()
    yield server
    await server.close()


async def test_protected_metrics_take_the_admin_or_the_metrics_token(guarded, http) -> None:
    url = guarded.url + "/metrics"
    refused = [
        {},
        _bearer("wrong"),
        _bearer(KEY_ACME),
        {"Authorization": METRICS_TOKEN},
        _basic("wrong"),
        {"Authorization": "Basic !!not-base64!!"},
        {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()},
        {"Authorization": "Basic " + base64.b64encode(METRICS_TOKEN.encode()).decode()},
    ]
    for headers in refused:  # (the last: no "user:" part, so no password)
        assert await _status(http, url, headers) == 401, headers
    for headers in (_bearer(ADMIN), _bearer(METRICS_TOKEN), _basic(METRICS_TOKEN)):
        assert await _status(http, url, headers) == 200, headers
    # the metrics token opens /metrics only: not the pages, not the admin API
    for path in PAGES:
        assert await _status(http, guarded.url + path, _bearer(METRICS_TOKEN)) == 401, path
    async with http.get(guarded.url + "/admin/status", headers=_bearer(METRICS_TOKEN)) as r:
        assert r.status == 401


async def test_protected_pages_take_the_admin_token(guarded, http) -> None:
    for path in PAGES:
        for headers in ({}, _bearer(KEY_ACME), _basic("nope")):
            assert await _status(http, guarded.url + path, headers) == 401, (path, headers)
        for headers in (_bearer(ADMIN), _basic(ADMIN)):  # Basic: a browser opening the page
            assert await _status(http, guarded.url + path, headers) == 200, (path, headers)
    # the probes stay open: an orchestrator has no token
    for path in ("/health", "/ready"):
        assert await _status(http, guarded.url + path) == 200


async def test_status_takes_the_admin_token_only(guarded, http) -> None:
    url = guarded.url + "/status"
    for headers in ({}, _bearer(METRICS_TOKEN), _bearer(KEY_ACME), _basic("nope")):
        async with http.get(url, headers=headers) as r:
            assert r.status == 401, headers
            assert r.headers["WWW-Authenticate"].startswith("Bearer")  # no browser dialog
    for headers in (_bearer(ADMIN), _basic(ADMIN)):
        async with http.get(url, headers=headers) as r:
            assert r.status == 200, headers


def test_page_tokens_are_compared_in_constant_time(monkeypatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = auth_module.hmac.compare_digest
    monkeypatch.setattr(auth_module.hmac, "compare_digest",
                        lambda a, b: calls.append((a, b)) or real(a, b))  # fmt: skip
    admin = {"token": ADMIN, "metrics_token": METRICS_TOKEN, "protect_metrics": True,
             "protect_pages": True}  # fmt: skip
    authn = auth_module.Authenticator(parse_config(_config(admin=admin)))
    authn.check_metrics(_bearer(ADMIN))  # matches the first reference: the second is still
    assert len(calls) == 2  # compared (no early exit that would time which token it was)
    with pytest.raises(Exception, match="needs the admin token"):
        authn.check_page(_bearer(METRICS_TOKEN))
    assert len(calls) == 3


def test_protection_without_any_token_fails_at_startup(monkeypatch) -> None:
    monkeypatch.delenv("VCP_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("VCP_METRICS_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="admin: protect_metrics"):
        parse_config(_config(admin={"protect_metrics": True}))
    monkeypatch.setenv("VCP_METRICS_TOKEN", "from-env")  # the env variable counts
    assert parse_config(_config(admin={"protect_metrics": True})).admin.protect_metrics

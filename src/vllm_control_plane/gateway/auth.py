"""Who is calling and may they come in: API keys, the admin and metrics tokens, tenant limits.

Keys are stored as SHA-256 digests: the lookup is a dict probe on the digest of what the client
sent, so a timing difference could at most reveal bits of a digest, never of a key. Tokens are
compared with :func:`hmac.compare_digest` on digests. With no tenant configured, client routes are
open (a local fleet); with no admin token, every admin call is refused and ``/status`` (the
dashboard's read-only data) is open; with one, ``/status`` needs it. ``/metrics``,
``/openapi.json`` and ``/dashboard`` are open unless ``admin.protect_metrics`` /
``admin.protect_pages`` say otherwise; those routes also take the token as the password of HTTP
Basic auth, since a browser cannot send a bearer token when it opens a page.

The tenant is derived from the API key alone: no header or body field can name another one.
Each tenant's rate and concurrency limits live in a :class:`TenantLimiter` that outlives this
object, so a config reload (which builds a new ``Authenticator``) keeps the buckets and the
in-flight counts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from vllm_control_plane.config import ControlPlaneConfig
from vllm_control_plane.core.rate_limit import TenantLimiter
from vllm_control_plane.gateway.errors import GatewayError, rate_limited, unauthorized
from vllm_control_plane.gateway.parsing import TenantPolicy
from vllm_control_plane.types import RequestPriority

_PAGE_CHALLENGE = {"WWW-Authenticate": 'Basic realm="vcp", Bearer realm="vcp"'}


def _digest(key: str) -> bytes:
    # aiohttp decodes header bytes that are not UTF-8 as surrogates: hash them as the bytes
    # they were (such a credential matches nothing) instead of failing with a 500
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def basic_password(headers: Mapping[str, str]) -> str | None:
    """The password of an ``Authorization: Basic <base64 user:password>`` header, if any."""
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except ValueError:  # bad base64, non-ASCII, or not UTF-8: no credential
        return None
    _, sep, password = decoded.partition(":")
    return password if sep and password else None


class Authenticator:
    """Maps API keys to tenants, checks tokens, applies tenant limits (rebuilt on reload)."""

    def __init__(
        self,
        config: ControlPlaneConfig,
        limiter: TenantLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tenants: dict[bytes, TenantPolicy] = {}
        for t in config.tenants:
            policy = TenantPolicy(
                name=t.name,
                default_priority=RequestPriority.parse(t.default_priority),
                max_priority=RequestPriority.parse(t.max_priority),
                cost_budget=t.cost_budget,
            )
            for key in t.api_keys:
                self._tenants[_digest(key.get_secret_value())] = policy
        admin = config.admin
        token, metrics_token = admin.resolve_token(), admin.resolve_metrics_token()
        self._admin = _digest(token) if token else None
        self._metrics = _digest(metrics_token) if metrics_token else None
        self._protect_metrics = admin.protect_metrics
        self._protect_pages = admin.protect_pages
        self._busy_retry_s = config.server.retry_after_s
        self.clock = clock
        self.limiter = limiter or TenantLimiter()
        limits = {t.name: t.rate_limit.to_core() for t in config.tenants if t.rate_limit}
        self.limiter.configure(limits, clock())

    @property
    def keys_required(self) -> bool:
        return bool(self._tenants)

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

    # ------------------------------------------------------------------ tenants
    def tenant(self, headers: Mapping[str, str]) -> TenantPolicy | None:
        """The caller's tenant; None when no keys are configured; 401 for a missing/bad key."""
        if not self._tenants:
            return None
        token = bearer(headers)
        if token is None:
            raise unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
        policy = self._tenants.get(_digest(token))
        if policy is None:
            raise unauthorized("Invalid API key.")
        return policy

    def acquire(self, tenant: TenantPolicy | None) -> None:
        """Count one request of ``tenant`` in, or refuse it with 429 when it is over a limit.
        Every successful call must be paired with :meth:`release` when the response ends."""
        if tenant is None:
            return
        verdict = self.limiter.acquire(tenant.name, self.clock())
        if verdict.admitted:
            return
        message = f"Rate limit of tenant {tenant.name!r}: {verdict.reason}."
        if verdict.limit == "rate":
            wait = max(1, math.ceil(verdict.retry_after_s or 1.0))
            raise rate_limited(message, "rate_limited", wait)
        raise rate_limited(message, "concurrency_limited", self._busy_retry_s)

    def release(self, tenant_name: str | None) -> None:
        """A request counted in by :meth:`acquire` has ended."""
        if tenant_name is not None:
            self.limiter.release(tenant_name)

    def limits_snapshot(self) -> dict[str, dict[str, Any]]:
        """Per tenant: its limits, tokens left and requests in flight (admin status)."""
        return self.limiter.snapshot(self.clock())

    # ------------------------------------------------------------------ tokens
    def check_admin(self, headers: Mapping[str, str]) -> None:
        """Raise 401 unless the request carries the admin token (403 when none is configured)."""
        if self._admin is None:
            raise GatewayError(
                403,
                "The admin API is disabled: set `admin.token` in the config or the "
                "VCP_ADMIN_TOKEN environment variable.",
                "admin_disabled",
            )
        token = bearer(headers)
        if token is None or not hmac.compare_digest(_digest(token), self._admin):
            raise unauthorized("Missing or invalid admin token.")

    def check_metrics(self, headers: Mapping[str, str]) -> None:
        """``/metrics``: open, or (``protect_metrics``) the admin or the metrics token."""
        if self._protect_metrics and not _matches(_credential(headers), self._admin,
                                                  self._metrics):  # fmt: skip
            raise _page_refusal("/metrics needs the admin or the metrics token.")

    def check_status(self, headers: Mapping[str, str]) -> None:
        """``/status`` (the dashboard's data): open when no admin token is configured (nothing
        to guard it with, and it holds nothing secret), else the admin token as for ``/admin``
        (also as a Basic password, so a browser that logged in to a protected page carries on).
        The 401 challenges with Bearer only, so a page's ``fetch`` never pops a login dialog."""
        if self._admin is not None and not _matches(_credential(headers), self._admin):
            raise unauthorized("/status needs the admin token (the gateway has one configured).")

    def check_page(self, headers: Mapping[str, str]) -> None:
        """``/openapi.json`` and ``/dashboard``: open, or (``protect_pages``) the admin token."""
        if self._protect_pages and not _matches(_credential(headers), self._admin):
            raise _page_refusal("This page needs the admin token.")


def _credential(headers: Mapping[str, str]) -> str | None:
    return bearer(headers) or basic_password(headers)


def _matches(token: str | None, *references: bytes | None) -> bool:
    """Constant-time match against every configured reference (no early exit on a hit)."""
    if token is None:
        return False
    digest = _digest(token)
    ok = False
    for ref in references:
        if ref is not None:
            ok |= hmac.compare_digest(digest, ref)
    return ok


def _page_refusal(message: str) -> GatewayError:
    return GatewayError(401, message, "invalid_api_key", headers=dict(_PAGE_CHALLENGE))

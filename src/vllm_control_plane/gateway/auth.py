"""API keys for client routes and the bearer token for ``/admin``.

Keys are stored as SHA-256 digests: the lookup is a dict probe on the digest of what the client
sent, so a timing difference could at most reveal bits of a digest, never of a key. The admin
token is compared with :func:`hmac.compare_digest`. With no tenant configured, client routes are
open (a local fleet); with no admin token, every admin call is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from vllm_control_plane.config import ControlPlaneConfig
from vllm_control_plane.gateway.errors import GatewayError, unauthorized
from vllm_control_plane.gateway.parsing import TenantPolicy
from vllm_control_plane.types import RequestPriority


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """Maps API keys to tenants and checks the admin token (rebuilt on config reload)."""

    def __init__(self, config: ControlPlaneConfig) -> None:
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
        token = config.admin.resolve_token()
        self._admin = _digest(token) if token else None

    @property
    def keys_required(self) -> bool:
        return bool(self._tenants)

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

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

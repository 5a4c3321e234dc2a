"""The OpenAI-compatible gateway (``vcp serve``): client API, admin API, metrics, dashboard."""

from __future__ import annotations

from vllm_control_plane.gateway.app import GatewayServer, build_app, serve
from vllm_control_plane.gateway.service import Gateway

__all__ = ["Gateway", "GatewayServer", "build_app", "serve"]

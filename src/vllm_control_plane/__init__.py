"""vLLM control plane: queue, schedule, route and observe requests across vLLM servers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

"""Support for tests and benchmarks against real vLLM (CPU build) run from a separate venv.

``env`` finds or sets up the venv and builds the tiny model; ``server`` starts and stops servers;
``build_tiny_model`` runs inside the vLLM venv; ``wire`` records and compares raw HTTP exchanges.
"""

from .env import VllmEnvError, build_model, ensure_vllm_env, vllm_venv_path
from .server import (
    SERVED_MODEL_NAME,
    VllmServer,
    VllmServerConfig,
    VllmServerError,
    running_servers,
)

__all__ = [
    "SERVED_MODEL_NAME",
    "VllmEnvError",
    "VllmServer",
    "VllmServerConfig",
    "VllmServerError",
    "build_model",
    "ensure_vllm_env",
    "running_servers",
    "vllm_venv_path",
]

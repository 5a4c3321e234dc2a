"""Session fixtures for the real-vLLM suite (`pytest -m vllm tests/vllm`).

`vllm_env` finds the separate vLLM venv, running scripts/setup_vllm_env.sh if it is missing, and
skips every test that needs it when that fails (VCP_VLLM_REQUIRED=1 turns the skip into a failure,
for CI; VCP_VLLM_NO_SETUP=1 skips the setup attempt). `tiny_model_dir` builds the random-weight
model once per session; `vllm_servers` starts two servers on it (~75 s, ~1.5 GiB each) and stops
them, with their whole process groups, when the session ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

# The suite's helpers live in tests/vllm_support; pytest puts only this folder on sys.path.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.vllm_support import (  # noqa: E402
    VllmEnvError,
    VllmServer,
    VllmServerConfig,
    VllmServerError,
    build_model,
    ensure_vllm_env,
    running_servers,
)


@pytest.fixture(scope="session")
def vllm_env() -> Path:
    """Path of a venv whose python imports vllm; skips (or fails, if required) otherwise."""
    try:
        return ensure_vllm_env(allow_setup=os.environ.get("VCP_VLLM_NO_SETUP") != "1")
    except VllmEnvError as exc:
        if os.environ.get("VCP_VLLM_REQUIRED") == "1":
            pytest.fail(f"real vLLM is required (VCP_VLLM_REQUIRED=1) but unavailable: {exc}")
        pytest.skip(f"real vLLM unavailable, skipping the vllm suite: {exc}")


@pytest.fixture(scope="session")
def tiny_model_dir(vllm_env: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight Llama (seeded, so the same files every session)."""
    return build_model(vllm_env, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def vllm_server_config(tiny_model_dir: Path) -> VllmServerConfig:
    """max_num_seqs=4 so that a handful of requests already shows a waiting queue in /metrics."""
    return VllmServerConfig(model_dir=tiny_model_dir, max_num_seqs=4)


@pytest.fixture(scope="session")
def vllm_servers(
    vllm_env: Path,
    vllm_server_config: VllmServerConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[VllmServer]]:
    """Two real vLLM servers on 127.0.0.1, started together, stopped at session end."""
    work_root = tmp_path_factory.mktemp("vllm-servers")
    # Left to itself vLLM pins both workers to core 0; give each its own core instead.
    cores = os.cpu_count() or 1
    configs = [replace(vllm_server_config, omp_threads_bind=str(i % cores)) for i in range(2)]
    with running_servers(vllm_env, configs, work_root=work_root) as servers:
        yield servers


@pytest.fixture
def live_vllm_servers(vllm_servers: list[VllmServer]) -> list[VllmServer]:
    """The session's two servers, restarted first if an earlier test killed one (~45 s)."""
    for server in vllm_servers:
        if server.is_alive():
            try:
                server.wait_ready(timeout_s=60)
                continue
            except VllmServerError:
                pass
        server.restart()
    return vllm_servers

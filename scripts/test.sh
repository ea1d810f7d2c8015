#!/usr/bin/env bash
# Runs every check and test of the workspace, the way CI does:
#   formatting, clippy (-D warnings), then all unit, contract and integration tests.
# Installs what the tests need when it is missing (moto server for DynamoDB/SQS, cfn-lint),
# starts moto on a free loopback port, and stops it again on exit. The end-to-end tests run the
# functions' real binaries (built by `cargo test` itself) on the sandbox's local Lambda.
set -euo pipefail
cd "$(dirname "$0")/.."

# One build from scratch gains nothing from incremental compilation, and its files are the
# largest part of a clean target directory: off unless the caller asks for it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

log() { printf '\n==> %s\n' "$*"; }

ensure_moto() {
  if ! command -v moto_server >/dev/null 2>&1; then
    log "installing moto server (pip install 'moto[server]')"
    python3 -m pip install --quiet 'moto[server]>=5.1,<6'
    hash -r
  fi
}

# The SAM template: cfn-lint (applies the SAM transform), then the checks of its variables,
# binaries and queue settings against the code (infra/check_template.py).
lint_template() {
  if ! command -v cfn-lint >/dev/null 2>&1; then
    log "installing cfn-lint (pip install 'cfn-lint>=1,<2')"
    python3 -m pip install --quiet 'cfn-lint>=1,<2'
    hash -r
  fi
  log "cfn-lint infra/template.yaml"
  cfn-lint infra/template.yaml
  python3 infra/check_template.py
  python3 -m unittest infra/test_check_template.py
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_moto() {
  local port
  port=$(free_port)
  # moto with DynamoDB requests one at a time, as atomic as DynamoDB (scripts/moto_server.py).
  python3 scripts/moto_server.py -H 127.0.0.1 -p "$port" >"${TMPDIR:-/tmp}/cosell-moto-$port.log" 2>&1 &
  MOTO_PID=$!
  trap 'kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true' EXIT
  # Wait (bounded) until moto answers.
  for _ in $(seq 1 100); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
      break
    fi
    if ! kill -0 "$MOTO_PID" 2>/dev/null; then
      echo "moto server failed to start; log: ${TMPDIR:-/tmp}/cosell-moto-$port.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
  export COSELL_MOTO_ENDPOINT="$AWS_ENDPOINT_URL"
  log "moto server on $AWS_ENDPOINT_URL"
}

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

lint_template

log "architecture rules (scripts/check_architecture.sh)"
scripts/check_architecture.sh

ensure_moto
start_moto

log "cargo test"
test_log=$(mktemp)
cargo test --workspace --locked 2>&1 | tee "$test_log"
# One closing line for the whole workspace (cargo prints one result line per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1); if ($i ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "\ntotal: %d passed, %d failed, %d skipped\n", p, f, s }' "$test_log"
rm -f "$test_log"

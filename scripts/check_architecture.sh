#!/usr/bin/env bash
# The architecture's rules, checked from the sources (fails with the rule and the place):
#   - no function crate depends on another function crate;
#   - each function's main.rs is at most 20 lines;
#   - no item is generic over the six port type parameters (`Ports` names them once).
# The domain's files forming layers (no import circle) is a test: shared/domain/tests/layers.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
functions=$(for dir in functions/*/; do basename "$dir"; done)
for own in $functions; do
  manifest="functions/$own/Cargo.toml"
  for other in $functions; do
    [ "$other" = "$own" ] && continue
    if grep -qE "^$other([.[:space:]]|=)" "$manifest"; then
      echo "architecture: $own depends on the function crate $other ($manifest)" >&2
      status=1
    fi
  done
  lines=$(wc -l < "functions/$own/src/main.rs")
  if [ "$lines" -gt 20 ]; then
    echo "architecture: functions/$own/src/main.rs has $lines lines (at most 20)" >&2
    status=1
  fi
done
if grep -rnE '<[^<>]*\bP, C, I, Q, A, L\b' --include='*.rs' shared functions cli bench simulation sandbox; then
  echo "architecture: an item is generic over the six port parameters (take one X: Ports)" >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "architecture: no function depends on another, every main.rs is short, no six-port generics"
exit "$status"

#!/usr/bin/env bash
# Run every fuzz harness for $FUZZ_SECONDS seconds each (default 45) over a copy of its saved
# corpus; print executions and coverage per harness; fail on any finding (the crashing input
# is left in $FUZZ_ARTIFACTS, default /tmp/kproxy-fuzz-artifacts). Needs atheris
# (pip install atheris) and the package installed with its compiled core.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds="${FUZZ_SECONDS:-45}"
artifacts="${FUZZ_ARTIFACTS:-${TMPDIR:-/tmp}/kproxy-fuzz-artifacts}"
rm -rf "$artifacts"
status=0
for h in manifests engine_api dns readers; do
    python -m tests.fuzz.run "$h" --seconds "$seconds" --artifacts "$artifacts" || status=1
done
if [ "$status" -ne 0 ]; then
    echo "fuzzing found a problem: see $artifacts (replay one with: python tests/fuzz/fuzz_HARNESS.py FILE)" >&2
fi
exit "$status"

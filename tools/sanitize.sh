#!/usr/bin/env bash
# The compiled core under AddressSanitizer and UndefinedBehaviorSanitizer: build a sanitized copy
# of kproxy_core._engine in a scratch directory (the in-place build of the work tree is not
# touched), check that it is the one Python loads, then run the tests that drive the compiled core
# (the twins, the differential and engine tests, the capture and flow-log scanners, updates, and
# the fuzz corpora) against it. Any ASan or UBSan report aborts the run: the script fails.
#
#   tools/sanitize.sh [extra pytest args]        SANITIZE_KEEP=1 keeps the scratch directory
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/kproxy-sanitize.XXXXXX")"
[ -n "${SANITIZE_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT

libasan="$(gcc -print-file-name=libasan.so)"
[ -f "$libasan" ] || { echo "sanitize.sh: gcc has no libasan.so ($libasan)" >&2; exit 2; }

# the sources and what the tests read, nothing built (no .so, no .c)
cp -r "$repo/kproxy_core" "$repo/src" "$repo/tests" "$repo/examples" "$work/"
cp "$repo/setup.py" "$repo/pyproject.toml" "$repo/README.md" "$repo/MANIFEST.in" "$work/"
find "$work" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
rm -f "$work/src/_engine.c"

echo "sanitize.sh: building the sanitized core in $work" >&2
(cd "$work" && KPROXY_SANITIZE=address,undefined "$python" setup.py -q build_ext --inplace \
    --build-temp "$work/build-temp" >"$work/build.log" 2>&1) || { tail -30 "$work/build.log" >&2; exit 2; }

so="$(ls "$work"/kproxy_core/_engine*.so)"
# ldd's output read whole first: `ldd | grep -q` under pipefail fails at random when grep exits
# at its first match while ldd is still writing (SIGPIPE, status 141)
libs="$(ldd "$so")"
if [[ "$libs" != *libasan* || "$libs" != *libubsan* ]]; then
    echo "sanitize.sh: $so is not linked with libasan and libubsan" >&2
    exit 2
fi

# libstdc++ too: without it ASan cannot find the real __cxa_throw, and a C++ exception (pyarrow
# reading a file that is not Parquet) aborts in the interceptor instead of being thrown
export LD_PRELOAD="$libasan $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"  # CPython leaks at exit by design
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONPATH="$work"
export PYTHONDONTWRITEBYTECODE=1
cd "$work"  # the scratch copy first on sys.path, never the work tree's kproxy_core

loaded="$("$python" -c 'import kproxy_core._engine as e, kproxy_core as k; print(e.__file__); print(k.COMPILED_AVAILABLE)')"
echo "sanitize.sh: loaded $loaded" | tr '\n' ' ' >&2; echo >&2
case "$loaded" in
    "$so"*True) ;;
    *) echo "sanitize.sh: the sanitized core is not the one imported" >&2; exit 2 ;;
esac

"$python" -m pytest -q -p no:cacheprovider -p no:randomly -o addopts="--import-mode=importlib -ra --benchmark-disable" \
    tests/test_core_twins.py tests/test_differential.py tests/test_engine.py tests/test_incremental.py \
    tests/test_captures.py tests/test_flowlogs.py tests/test_selectors_engine.py tests/fuzz/ "$@"

#!/usr/bin/env bash
# Coverage-guided fuzzing of the filter's parsers (cargo-fuzz + libFuzzer, AddressSanitizer).
#
#   filter/fuzz/run.sh [SECONDS] [TARGET...]   each target for SECONDS (default 60)
#   filter/fuzz/run.sh --replay [TARGET...]    run the committed seed corpus once, quickly
#
# cargo-fuzz wants nightly features; the stable toolchain runs them with RUSTC_BOOTSTRAP=1.
# New inputs go to target/fuzz/corpus/<target> (the committed seeds in corpus/ stay as they
# are); a crash or panic is written to target/fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$ROOT/target/fuzz"
TARGETS_ALL=(session_cookie sealed_session login_cookie return_url cookie_header header_map config jwks discovery token_response rsa_verify)

replay=0
seconds=60
if [ "${1:-}" = "--replay" ]; then replay=1; shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${TARGETS_ALL[@]}")

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz >&2
fi

cd "$HERE"
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
failed=0
for t in "${targets[@]}"; do
  cargo fuzz build "$t" >&2
  art="$CARGO_TARGET_DIR/artifacts/$t"; work="$CARGO_TARGET_DIR/corpus/$t"
  mkdir -p "$art" "$work"
  log="$CARGO_TARGET_DIR/$t.log"
  if [ $replay = 1 ]; then
    args=(-runs=0 "$HERE/corpus/$t")
  else
    args=("$work" "$HERE/corpus/$t" -max_total_time="$seconds" -print_final_stats=1)
  fi
  if "$bin/$t" "${args[@]}" -artifact_prefix="$art/" >"$log" 2>&1; then
    runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || echo '?')
    echo "fuzz: $t: $runs runs, no crash"
  else
    echo "fuzz: $t: CRASH or panic, see $log and $art/" >&2
    grep -m1 -A2 "panicked at" "$log" >&2 || true
    failed=1
  fi
done
exit $failed

#!/usr/bin/env bash
# Builds the filter (or one of its cdylib examples) for wasm and writes it to OUT.
#   filter/build-wasm.sh OUT [--example NAME]
# Route: rustup's wasm32-unknown-unknown or wasm32-wasip1 target when installed; else Debian's
# rustc-web + cargo-web + rust-web-src with -Zbuild-std (installed by apt on demand; std built
# with its `optimize_for_size` feature: 28 KB smaller, no path measurably slower; panic
# locations carry their file only, `-Zlocation-detail=file`: 13 KB of line and column records
# and their copies gone, and a panic's message still says which file; `--cfg oidc_size`: the
# functions marked `optimize(size)` (configuration, the provider's documents and token
# answers, the callback, sign-out and userinfo endpoints; see filter/src/lib.rs) compiled for
# size: 19 KB, the same fuel on every request let through, refused or redirected, 1 % more on
# a callback). The filter's
# exports are cut to filter/wasm-exports with binaryen's `wasm-metadce`, then the result goes
# through `wasm-opt -Os` (binaryen installed on demand; each step skipped with a warning if it
# cannot run).
set -euo pipefail
cd "$(dirname "$0")/.."

out="$1"; shift
what=(--lib); name=oidc_filter; sub=""
if [ "${1:-}" = "--example" ]; then what=(--example "$2"); name="$2"; sub="examples/"; fi
target_dir=target/wasm
apt_install() {
  if [ "$(id -u)" != 0 ]; then echo "build-wasm: need root to apt-get install $*" >&2; return 1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

installed="$(rustup target list --installed 2>/dev/null || true)"
if grep -qx wasm32-unknown-unknown <<<"$installed"; then
  echo "build-wasm: rustup target wasm32-unknown-unknown"
  cargo build --release -p oidc-filter "${what[@]}" --target wasm32-unknown-unknown --target-dir "$target_dir"
  built="$target_dir/wasm32-unknown-unknown/release/$sub$name.wasm"
elif grep -qx wasm32-wasip1 <<<"$installed"; then
  echo "build-wasm: rustup target wasm32-wasip1"
  cargo build --release -p oidc-filter "${what[@]}" --target wasm32-wasip1 --target-dir "$target_dir"
  built="$target_dir/wasm32-wasip1/release/$sub$name.wasm"
else
  echo "build-wasm: no rustup wasm32 target; Debian rustc-web with -Zbuild-std"
  if [ ! -x /usr/bin/cargo ] || [ ! -d /usr/lib/rustlib/src/rust/library ] \
     || ! { command -v rust-lld || command -v wasm-ld-19; } >/dev/null; then
    echo "build-wasm: installing rustc-web cargo-web rust-web-src lld-19 (apt)"
    apt_install rustc-web cargo-web rust-web-src lld-19
  fi
  linker="$(command -v rust-lld || command -v wasm-ld-19)"
  RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
  RUSTFLAGS="${RUSTFLAGS:-} -Zlocation-detail=file --cfg oidc_size" \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$linker" \
    /usr/bin/cargo build --release -p oidc-filter "${what[@]}" --target wasm32-unknown-unknown \
      --target-dir "$target_dir/debian" -Zbuild-std=std,panic_abort \
      -Zbuild-std-features=optimize_for_size
  built="$target_dir/debian/wasm32-unknown-unknown/release/$sub$name.wasm"
fi

mkdir -p "$(dirname "$out")"
command -v wasm-opt >/dev/null || { echo "build-wasm: installing binaryen (apt)"; apt_install binaryen || true; }
features=(--enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int)
# The filter exports only filter/wasm-exports (the examples, the bench's floors, keep the SDK's
# full set): wasm-metadce keeps what those exports reach and removes the rest.
raw_size=$(stat -c %s "$built")
if [ -z "$sub" ]; then
  keep=()
  while read -r line; do
    line="${line%%#*}"; line="${line//[[:space:]]/}"
    [ -n "$line" ] && keep+=("$line")
  done < filter/wasm-exports
  graph="$out.graph.json"
  {
    printf '[{"name":"outside","root":true,"reaches":['
    sep=""; for e in "${keep[@]}"; do printf '%s"e:%s"' "$sep" "$e"; sep=","; done
    printf ']}'
    for e in "${keep[@]}"; do printf ',{"name":"e:%s","export":"%s"}' "$e" "$e"; done
    printf ']\n'
  } > "$graph"
  if command -v wasm-metadce >/dev/null \
     && wasm-metadce "${features[@]}" "$built" -f "$graph" -o "$out.pruned" >/dev/null; then
    built="$out.pruned"
  else
    rm -f "$out.pruned"
    echo "build-wasm: WARNING: wasm-metadce unavailable or failed; the SDK's unused exports stay" >&2
  fi
  rm -f "$graph"
fi
if command -v wasm-opt >/dev/null && wasm-opt -Os "${features[@]}" "$built" -o "$out.tmp"; then
  mv "$out.tmp" "$out"; rm -f "$out.pruned"
  echo "build-wasm: $out $(stat -c %s "$out") bytes ($raw_size as linked)"
else
  rm -f "$out.tmp"; cp "$built" "$out"; rm -f "$out.pruned"
  echo "build-wasm: WARNING: wasm-opt unavailable or failed; $out is not size-optimised" >&2
  echo "build-wasm: $out $(stat -c %s "$out") bytes"
fi

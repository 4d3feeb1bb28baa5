#!/usr/bin/env bash
# Run every cargo-fuzz target for SECONDS each (default 30), one after the other; exit non-zero
# on the first crash (libFuzzer keeps the input under fuzz/artifacts/<target>/).
#
# The committed seeds in fuzz/corpus/<target>/ are read, never written: new inputs go to
# fuzz/target/corpus/<target>/ (ignored by git), so repeated local runs keep improving.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail

secs="${1:-30}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../fuzz"

targets=(policy_compile token_verify path_scope decide minimize minimize_stream)
cargo +nightly fuzz build

for t in "${targets[@]}"; do
  case "$t" in
    policy_compile) dict=(-dict=dict/policy.dict) ;;
    path_scope | decide) dict=(-dict=dict/request.dict) ;;
    minimize | minimize_stream) dict=(-dict=dict/fhir.dict) ;;
    *) dict=() ;;
  esac
  work="target/corpus/$t"
  mkdir -p "$work" "corpus/$t"
  echo "== $t: ${secs}s"
  cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -print_final_stats=1 "${dict[@]}"
  echo "== $t: ok, $(find "$work" -type f | wc -l) inputs in $work"
done

#!/usr/bin/env bash
# The whole test suite: Release build + CTest, the same tests under
# AddressSanitizer + UndefinedBehaviorSanitizer, and a short libFuzzer run of
# the bytecode verifier. Prints each runner's summary; exits non-zero on any
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
status=0

echo "== build (Release, -Werror)"
bash scripts/build.sh

echo "== tests (Release)"
(cd build && ctest --output-on-failure -j "$jobs") || status=1

if [ "${DVM_SKIP_SANITIZERS:-0}" != "1" ]; then
  echo "== build (ASan + UBSan)"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDVM_SANITIZE=ON >/dev/null
  cmake --build build-asan -j "$jobs" --target dvm_tests dvm_cli
  echo "== tests (ASan + UBSan)"
  (cd build-asan && DVM_RANDOM_KERNELS=${DVM_ASAN_RANDOM_KERNELS:-300} \
     ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
     ctest --output-on-failure -j "$jobs") || status=1
fi

if [ "${DVM_SKIP_FUZZ:-0}" != "1" ]; then
  echo "== fuzz (verifier, libFuzzer, ${DVM_FUZZ_SECONDS:-60}s)"
  CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDVM_FUZZ=ON \
     -DDVM_BUILD_TESTS=OFF -DDVM_WERROR=OFF >/dev/null
  cmake --build build-fuzz -j "$jobs" --target fuzz_verifier
  mkdir -p build-fuzz/corpus
  ./build-fuzz/fuzz_verifier -max_total_time="${DVM_FUZZ_SECONDS:-60}" -print_final_stats=1 \
     build-fuzz/corpus 2>&1 | tail -n 5 || status=1
fi

exit $status

#!/usr/bin/env bash
# Build llama.cpp once (cached) from the source vendored in the llama-cpp-python sdist that
# `kiln data fetch --set llama-cpp` fetches, and print the folder holding its binaries.
# The peer for the GGUF speed/correctness scripts and the `kiln serve` load benchmark.
#
# usage: scripts/llama-cpp.sh            # prints e.g. /root/.cache/kiln/llama.cpp-0.3.36/build/bin
# env:   KILN_LLAMA_CPP_DIR  the cache folder (default ~/.cache/kiln/llama.cpp-0.3.36)
#        KILN               the kiln binary used to fetch the source (default target/release/kiln)
#
# Flags: a native build segfaults on CPUs that report AMX (some Intel hosts here), so the ISA is
# spelled out instead: AVX2/FMA/F16C always, the AVX-512 family where /proc/cpuinfo has avx512f.
# The cache key includes those flags, so a folder built on an AVX2 host is not reused on AVX-512.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36
isa=avx2
flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
if grep -q avx512f /proc/cpuinfo; then
  isa=avx512
  flags+=(-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON)
fi
dir=${KILN_LLAMA_CPP_DIR:-$HOME/.cache/kiln/llama.cpp-$version-$isa}
targets=(llama-completion llama-bench llama-server llama-perplexity llama-tokenize)
have_all() {
  for t in "${targets[@]}"; do [ -x "$dir/build/bin/$t" ] || return 1; done
}
if ! have_all; then
  command -v cmake >/dev/null || { echo "cmake is missing: apt-get install -y cmake" >&2; exit 1; }
  kiln=${KILN:-target/release/kiln}
  "$kiln" data fetch --set llama-cpp >&2
  data=${KILN_DATA_DIR:-data}
  src=$data/raw/llama-cpp/llama_cpp_python-$version/vendor/llama.cpp
  [ -f "$src/CMakeLists.txt" ] || { echo "llama.cpp source not found at $src" >&2; exit 1; }
  mkdir -p "$dir"
  echo "building llama.cpp $version ($isa) in $dir/build (about 4 minutes on 2 cores)" >&2
  cmake -S "$src" -B "$dir/build" -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release "${flags[@]}" >"$dir/configure.log" 2>&1 \
    || { tail -20 "$dir/configure.log" >&2; exit 1; }
  cmake --build "$dir/build" -j "$(nproc)" --target "${targets[@]}" >"$dir/build.log" 2>&1 \
    || { tail -20 "$dir/build.log" >&2; exit 1; }
fi
echo "$dir/build/bin"

#!/usr/bin/env bash
# Fetch NVRTC 13.0 (PyPI wheel, no CUDA toolkit or GPU needed) into /tmp/kiln-nvrtc and print the
# library folder; use it to compile-check the kernels on the CPU machine:
#   export LD_LIBRARY_PATH=$(bash scripts/gpu/nvrtc-local.sh)
#   CUDARC_CUDA_VERSION=13000 cargo test --release -p kiln-engine --features cuda --test cuda_kernels
set -euo pipefail
d=/tmp/kiln-nvrtc
if [ ! -f "$d/x/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  mkdir -p "$d"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$d" "nvidia-cuda-nvrtc==13.0.88" >&2
  for f in "$d"/*.whl; do python3 -m zipfile -e "$f" "$d/x" >&2; done
fi
echo "$d/x/nvidia/cu13/lib"

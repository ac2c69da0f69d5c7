#!/usr/bin/env bash
# A Python with llama.cpp's gguf-py (PyPI gguf==0.19.0) in /tmp/kiln-gguf-venv, the reference that
# crates/kiln-engine/tests/gguf_dequant.rs compares kiln's dequantization with (it looks there,
# or at $KILN_PYTHON), with scikit-build-core so its pip can download the llama-cpp-python sdist
# (`PATH=/tmp/kiln-gguf-venv/bin:$PATH kiln data fetch --set llama-cpp`, needs cmake too).
# Prints the interpreter's path.
set -euo pipefail
d=/tmp/kiln-gguf-venv
if ! "$d/bin/python" -c "import gguf, scikit_build_core" 2>/dev/null; then
  python3 -m venv "$d" >&2
  "$d/bin/pip" install -q --disable-pip-version-check "gguf==0.19.0" scikit-build-core >&2
fi
echo "$d/bin/python"

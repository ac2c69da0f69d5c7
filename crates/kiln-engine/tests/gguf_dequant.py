"""Reference dequantization for tests/gguf_dequant.rs, from llama.cpp's gguf-py (PyPI gguf==0.19.0).

usage: python gguf_dequant.py OUT_DIR [MODEL.gguf ...]

Writes OUT_DIR/index.json and, per case, the input bytes (`*.in`) and gguf-py's f32 output
(`*.out`, little-endian). Cases: the first tensor of every type in each model (its first 8192
elements at most), and random blocks of every type kiln reads (block scales set to finite f16
values) so the types the fetched files lack (F16, BF16, Q4_0, Q5_K) are covered too.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T, GGML_QUANT_SIZES, quants

out_dir = sys.argv[1]
os.makedirs(out_dir, exist_ok=True)
cases = []


def emit(name, qtype, raw):
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    ref = quants.dequantize(raw.reshape(1, -1), qtype).astype("<f4").reshape(-1)
    with open(os.path.join(out_dir, name + ".in"), "wb") as f:
        f.write(raw.tobytes())
    with open(os.path.join(out_dir, name + ".out"), "wb") as f:
        f.write(ref.tobytes())
    cases.append({"name": name, "type": int(qtype), "n": int(ref.size)})


for path in sys.argv[2:]:
    r = GGUFReader(path)
    seen = set()
    for t in r.tensors:
        if t.tensor_type in seen:
            continue
        seen.add(t.tensor_type)
        be, bb = GGML_QUANT_SIZES[t.tensor_type]
        n = min(int(t.n_elements), 8192) // be * be
        raw = np.asarray(r.data[t.data_offset : t.data_offset + n // be * bb])
        emit(f"{os.path.basename(path)}-{t.name}", t.tensor_type, raw)

rng = np.random.default_rng(13)
# Where each type keeps its f16 scales (byte offsets in a block), so random blocks stay finite.
scales = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q8_0: [0], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
for qtype in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]:
    be, bb = GGML_QUANT_SIZES[qtype]
    n_blocks = 4096 // be
    if qtype == T.F32:
        raw = rng.standard_normal(n_blocks).astype("<f4").view(np.uint8)
    elif qtype == T.F16:
        raw = rng.standard_normal(n_blocks).astype("<f2").view(np.uint8)
    elif qtype == T.BF16:
        raw = (rng.standard_normal(n_blocks).astype("<f4").view("<u4") >> 16).astype("<u2").view(np.uint8)
    else:
        raw = rng.integers(0, 256, size=(n_blocks, bb), dtype=np.uint8)
        for off in scales[qtype]:
            d = (rng.standard_normal(n_blocks) * 0.01).astype("<f2").view(np.uint8).reshape(n_blocks, 2)
            raw[:, off : off + 2] = d
    emit(f"random-{qtype.name}", qtype, raw.reshape(-1))

with open(os.path.join(out_dir, "index.json"), "w") as f:
    json.dump(cases, f)

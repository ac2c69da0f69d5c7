"""What llama.cpp's gguf-py (PyPI gguf==0.19.0) reads in GGUF files `kiln export gguf` wrote, for
tests/export_gguf.rs to compare with kiln's own reader; whether kiln's F16 and Q8_0 tensors
equal gguf-py's own encoding of the F32 export's tensors, byte for byte; and whether gguf-py's
GGUFWriter, given the same key/values and tensors in the same order, writes the same bytes.

usage: export_gguf.py F32.gguf F16.gguf Q8_0.gguf  (prints one JSON object)
"""
import json
import os
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, quants


def describe(path):
    r = GGUFReader(path)
    kv = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        v = field.contents()
        if field.types[0] == GGUFValueType.ARRAY and field.types[-1] != GGUFValueType.STRING:
            v = [x.item() if hasattr(x, "item") else x for x in v]
        elif hasattr(v, "item"):
            v = v.item()
        kv[name] = v
    tensors = {
        t.name: {
            "type": int(t.tensor_type),
            "dims": [int(d) for d in t.shape],
            "start": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
        }
        for t in r.tensors
    }
    return r, {"kv": kv, "tensors": tensors, "alignment": int(r.alignment)}


f32_path, f16_path, q8_path = sys.argv[1:4]
f32_reader, f32_desc = describe(f32_path)
f16_reader, f16_desc = describe(f16_path)
q8_reader, q8_desc = describe(q8_path)
source = {t.name: np.asarray(t.data, dtype=np.float32) for t in f32_reader.tensors}

checked = {"F16": 0, "Q8_0": 0}
mismatched = []
for reader, qtype in ((f16_reader, GGMLQuantizationType.F16), (q8_reader, GGMLQuantizationType.Q8_0)):
    for t in reader.tensors:
        if t.tensor_type != qtype:
            continue
        want = quants.quantize(source[t.name], qtype).view(np.uint8).ravel()
        got = np.asarray(t.data).view(np.uint8).ravel()
        checked[qtype.name] += 1
        if want.shape != got.shape or not np.array_equal(want, got):
            mismatched.append(f"{qtype.name} {t.name}")



def rewritten_identical(path, reader):
    """Replays the file through GGUFWriter and compares the bytes."""
    fd, out = tempfile.mkstemp(suffix=".gguf")
    os.close(fd)
    try:
        w = GGUFWriter(out, reader.fields["general.architecture"].contents())
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            w.add_key_value(name, field.contents(), field.types[0], sub_type=sub)
        for t in reader.tensors:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(out, "rb") as a, open(path, "rb") as b:
            return a.read() == b.read()
    finally:
        os.unlink(out)


identical = {k: rewritten_identical(p, r) for k, p, r in
             (("f32", f32_path, f32_reader), ("f16", f16_path, f16_reader), ("q8_0", q8_path, q8_reader))}
print(json.dumps({"f32": f32_desc, "f16": f16_desc, "q8_0": q8_desc,
                  "encoded_checked": checked, "encoded_mismatched": mismatched,
                  "gguf_writer_identical": identical}))

#!/usr/bin/env python3
"""Expected token ids for a GGUF vocab from llama.cpp's own tokenizer (`llama-tokenize`), for
crates/kiln-chat/tests/gguf_vocab.rs: the cases of llama.cpp's llama-spm test input (by index,
read from the data folder) and kiln's own texts (crates/kiln-chat/tests/fixtures/vocab-texts.json),
each tokenized as llama.cpp's test-tokenizer-0 does (no BOS, special tokens not parsed) and the
own texts also with special tokens parsed.

usage: dev/gguf/vocab-fixture.py LLAMA_TOKENIZE MODEL.gguf OUT.jsonl
(LLAMA_TOKENIZE: scripts/llama-cpp.sh builds it; run under the shared lock, ~1 s per case.)
"""
import json, os, subprocess, sys, tempfile

tool, model, out = sys.argv[1:4]
root = os.path.join(os.path.dirname(__file__), "..", "..")
data = os.environ.get("KILN_DATA_DIR", os.path.join(root, "data"))
inp = os.path.join(data, "raw/llama-cpp/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf.inp")
# test-tokenizer-0's split: pieces between separators.
cases = open(inp, encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
if cases and cases[-1] == "":
    cases.pop()
own = json.load(open(os.path.join(root, "crates/kiln-chat/tests/fixtures/vocab-texts.json"), encoding="utf-8"))


def tokenize(text, parse_special):
    with tempfile.NamedTemporaryFile("wb", delete=False) as f:
        f.write(text.encode("utf-8"))
    args = [tool, "-m", model, "-f", f.name, "--ids", "--no-bos", "--no-escape", "--log-disable"]
    if not parse_special:
        args.append("--no-parse-special")
    r = subprocess.run(args, capture_output=True, check=True)
    os.unlink(f.name)
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    for i, text in enumerate(cases):
        f.write(json.dumps({"case": i, "parse_special": False, "ids": tokenize(text, False)}) + "\n")
    for i, text in enumerate(own):
        for ps in (False, True):
            f.write(json.dumps({"own": i, "parse_special": ps, "ids": tokenize(text, ps)}) + "\n")
os.replace(tmp, out)
print(f"{len(cases)} llama-spm cases and {len(own)} own texts -> {out}")

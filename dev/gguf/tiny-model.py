#!/usr/bin/env python3
"""Tiny random-weight GGUF models of llama.cpp's `qwen2` and `qwen3` architectures, and a numpy
forward pass over them: no Qwen weights are available offline, so these stand in for them.

- `write`: a model file. 2 layers, width 64, 4 query heads and 2 KV heads; qwen2 with Q/K/V
  biases, head size 16 (width / heads) and an untied output; qwen3 with QK-norm, head size 32
  from `attention.key_length` (so the heads are wider than width / heads, as in Qwen3-0.6B) and
  the output tied to the embedding. RoPE base 1e6 and RMSNorm eps 1e-6 as the released models.
  `--vocab small` (267 tokens: the 256 byte symbols of GPT-2's byte-level BPE, 8 merges, Qwen's
  3 special tokens) keeps an F16 file under ~200 KB for kiln's fixtures; `--vocab qwen2` takes
  the real 151,936-token vocabulary from llama.cpp's models/ggml-vocab-qwen2.gguf.
- `reference`: the numpy forward (float64, over the file's own weights as stored) of a token
  sequence, every position's logits as JSON: kiln's fixture (crates/kiln-engine/tests/gguf_qwen.rs).

The forward follows llama.cpp's src/models/qwen2.cpp and qwen3.cpp: RMSNorm → Q, K, V (+ bias)
→ [qwen3: RMSNorm per head of Q and K] → RoPE, NeoX layout (pairs i, i + head/2) → causal GQA
attention scaled by 1/√head → output → residual; RMSNorm → SwiGLU MLP → residual; final RMSNorm →
output matrix.

usage: tiny-model.py write {qwen2,qwen3} OUT.gguf [--vocab small|qwen2] [--type f16|f32] [--seed N]
                                [--template CHAT_TEMPLATE.jinja]
       tiny-model.py reference MODEL.gguf IDS(comma-separated) OUT.json
Needs gguf-py and numpy (`bash scripts/gguf-py.sh` makes /tmp/kiln-gguf-venv).
"""
import argparse, json, os

import numpy as np
import gguf

WIDTH, LAYERS, HEADS, KV_HEADS, FF = 64, 2, 4, 2, 96
ROPE_BASE, EPS = 1e6, 1e-6
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Merges of the small vocab, in rank order (their results are tokens too).
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "e r", "Ġ a", "o n", "Ġ s"]
DATA = os.environ.get(
    "KILN_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "data")
)
QWEN2_VOCAB = os.path.join(
    DATA, "raw/llama-cpp/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf"
)


def byte_symbols():
    """GPT-2's byte → printable-character map, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return [out[b] for b in range(256)]


def small_vocab():
    tokens = byte_symbols() + [m.replace(" ", "") for m in MERGES] + SPECIALS
    types = [1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS)
    return tokens, types, MERGES, len(tokens) - len(SPECIALS)


def qwen2_vocab():
    r = gguf.GGUFReader(QWEN2_VOCAB)
    f = r.fields
    return (
        f["tokenizer.ggml.tokens"].contents(),
        f["tokenizer.ggml.token_type"].contents(),
        f["tokenizer.ggml.merges"].contents(),
        f["tokenizer.ggml.eos_token_id"].contents(),
    )


def write(arch, out, vocab_kind, ty, seed, template=None):
    rng = np.random.default_rng(seed)
    tokens, types, merges, eos = small_vocab() if vocab_kind == "small" else qwen2_vocab()
    n_vocab = len(tokens)
    head = 32 if arch == "qwen3" else WIDTH // HEADS
    qd, kvd = HEADS * head, KV_HEADS * head
    w = gguf.GGUFWriter(out, arch)
    w.add_context_length(4096)
    w.add_embedding_length(WIDTH)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    if arch == "qwen3":
        w.add_key_length(head)
        w.add_value_length(head)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(EPS)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if ty == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(eos)
    w.add_bos_token_id(eos)
    w.add_add_bos_token(False)
    if template:
        w.add_chat_template(open(template, encoding="utf-8").read())
    dtype = np.float16 if ty == "f16" else np.float32

    def mat(name, rows, cols):
        # Scaled by 1/√cols so activations keep their size through the layers.
        w.add_tensor(name, (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(dtype))

    def vec(name, n, mean, spread):
        # Norm weights and biases stay F32, as llama.cpp's converter keeps 1-D tensors.
        w.add_tensor(name, (mean + spread * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", n_vocab, WIDTH)
    for l in range(LAYERS):
        b = f"blk.{l}"
        vec(f"{b}.attn_norm.weight", WIDTH, 1.0, 0.1)
        mat(f"{b}.attn_q.weight", qd, WIDTH)
        mat(f"{b}.attn_k.weight", kvd, WIDTH)
        mat(f"{b}.attn_v.weight", kvd, WIDTH)
        if arch == "qwen2":
            vec(f"{b}.attn_q.bias", qd, 0.0, 0.5)
            vec(f"{b}.attn_k.bias", kvd, 0.0, 0.5)
            vec(f"{b}.attn_v.bias", kvd, 0.0, 0.5)
        else:
            vec(f"{b}.attn_q_norm.weight", head, 1.0, 0.1)
            vec(f"{b}.attn_k_norm.weight", head, 1.0, 0.1)
        mat(f"{b}.attn_output.weight", WIDTH, qd)
        vec(f"{b}.ffn_norm.weight", WIDTH, 1.0, 0.1)
        mat(f"{b}.ffn_gate.weight", FF, WIDTH)
        mat(f"{b}.ffn_up.weight", FF, WIDTH)
        mat(f"{b}.ffn_down.weight", WIDTH, FF)
    vec("output_norm.weight", WIDTH, 1.0, 0.1)
    if arch == "qwen2":
        mat("output.weight", n_vocab, WIDTH)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{out}: {arch}, vocab {n_vocab}, {ty}, {os.path.getsize(out)} bytes")


def load(path):
    r = gguf.GGUFReader(path)
    f = r.fields
    arch = f["general.architecture"].contents()
    cfg = {k[len(arch) + 1 :]: f[k].contents() for k in f if k.startswith(arch + ".")}
    # gguf-py gives each tensor in numpy order: [rows, cols] = GGUF dims reversed.
    t = {x.name: np.array(x.data, dtype=np.float64).reshape(list(reversed(x.shape.tolist()))) for x in r.tensors}
    return arch, cfg, t


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_neox(x, base):
    """x: [T, heads, head]; rotates the pairs (i, i + head/2) by pos·base^(−2i/head)."""
    T, _, hd = x.shape
    half = hd // 2
    theta = np.arange(T)[:, None] * base ** (-2.0 * np.arange(half) / hd)[None, :]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def forward(path, ids):
    arch, c, t = load(path)
    H, KV = c["attention.head_count"], c["attention.head_count_kv"]
    d = c["embedding_length"]
    hd = c.get("attention.key_length", d // H)
    eps, base = c["attention.layer_norm_rms_epsilon"], c.get("rope.freq_base", 10000.0)
    T = len(ids)
    x = t["token_embd.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(c["block_count"]):
        p = lambda n: t[f"blk.{l}.{n}"]
        h = rmsnorm(x, p("attn_norm.weight"), eps)
        q, k, v = (h @ p(f"attn_{n}.weight").T for n in "qkv")
        if f"blk.{l}.attn_q.bias" in t:
            q, k, v = q + p("attn_q.bias"), k + p("attn_k.bias"), v + p("attn_v.bias")
        q, k, v = q.reshape(T, H, hd), k.reshape(T, KV, hd), v.reshape(T, KV, hd)
        if f"blk.{l}.attn_q_norm.weight" in t:
            q = rmsnorm(q, p("attn_q_norm.weight"), eps)
            k = rmsnorm(k, p("attn_k_norm.weight"), eps)
        q, k = rope_neox(q, base), rope_neox(k, base)
        # Query head i reads KV head i // (H / KV).
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", s, v).reshape(T, H * hd)
        x = x + att @ p("attn_output.weight").T
        h = rmsnorm(x, p("ffn_norm.weight"), eps)
        g, u = h @ p("ffn_gate.weight").T, h @ p("ffn_up.weight").T
        x = x + (g / (1 + np.exp(-g)) * u) @ p("ffn_down.weight").T
    x = rmsnorm(x, t["output_norm.weight"], eps)
    return arch, x @ t.get("output.weight", t["token_embd.weight"]).T


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("write")
    a.add_argument("arch", choices=["qwen2", "qwen3"])
    a.add_argument("out")
    a.add_argument("--vocab", choices=["small", "qwen2"], default="small")
    a.add_argument("--type", choices=["f16", "f32"], default="f16")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--template", help="a Jinja chat template file for tokenizer.chat_template")
    r = sub.add_parser("reference")
    r.add_argument("model")
    r.add_argument("ids")
    r.add_argument("out")
    args = ap.parse_args()
    if args.cmd == "write":
        write(args.arch, args.out, args.vocab, args.type, args.seed, args.template)
    else:
        ids = [int(i) for i in args.ids.split(",")]
        arch, logits = forward(args.model, ids)
        with open(args.out, "w") as f:
            json.dump(
                {
                    "model": os.path.basename(args.model),
                    "arch": arch,
                    "ids": ids,
                    "logits": [[float(f"{v:.7g}") for v in row] for row in logits],
                },
                f,
            )
        print(f"{args.out}: {len(ids)} positions × {logits.shape[1]} logits")


if __name__ == "__main__":
    main()

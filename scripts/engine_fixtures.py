"""Write the PyTorch parity fixtures for kiln-engine (crates/kiln-engine/tests/fixtures/).

Usage: python3 scripts/engine_fixtures.py   (needs torch + numpy; the outputs are committed so
the Rust tests need neither)

For each architecture (gpt2 = GPT-2 exactly as torch_ref.py / HF; modern = RoPE, QK-norm,
param-free RMSNorm, ReLU^2, untied head, GQA, logit soft-cap) it writes a checkpoint directory
(gpt2: HF GPT-2 layout, config.json + model.safetensors with Conv1D [in, out] weights;
modern: kiln layout + kiln.json) and expect.safetensors with the inputs, targets, per-token loss
weights, logits, the weighted loss, every parameter gradient, and the losses of 3 AdamW steps.
"""
import json, math, os, struct, sys
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "kiln-engine", "tests", "fixtures")
V, T, B, L, C = 64, 16, 2, 2, 32


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def rms(x, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class Block(nn.Module):
    def __init__(s, arch, n_head, n_kv):
        super().__init__()
        s.arch, s.h, s.kv, s.hd = arch, n_head, n_kv, C // n_head
        gpt2 = arch == "gpt2"
        if gpt2:
            s.ln_1, s.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        s.c_attn = nn.Linear(C, (n_head + 2 * n_kv) * s.hd, bias=gpt2)
        s.c_proj = nn.Linear(C, C, bias=gpt2)
        s.c_fc = nn.Linear(C, 4 * C, bias=gpt2)
        s.mlp_proj = nn.Linear(4 * C, C, bias=gpt2)

    def rope(s, x):  # x: B, h, T, hd ; rotate-half convention
        half = s.hd // 2
        freq = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
        ang = torch.arange(x.shape[2], dtype=torch.float32)[:, None] * freq[None, :]
        cos, sin = ang.cos(), ang.sin()
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)

    def forward(s, x):
        Bq, Tq, _ = x.shape
        n1 = s.ln_1(x) if s.arch == "gpt2" else rms(x, 1e-6)
        qkv = s.c_attn(n1)
        q, k, v = qkv.split([s.h * s.hd, s.kv * s.hd, s.kv * s.hd], dim=2)
        q = q.view(Bq, Tq, s.h, s.hd).transpose(1, 2)
        k = k.view(Bq, Tq, s.kv, s.hd).transpose(1, 2)
        v = v.view(Bq, Tq, s.kv, s.hd).transpose(1, 2)
        if s.arch == "modern":
            q, k = s.rope(rms(q, 1e-6)), s.rope(rms(k, 1e-6))
            k = k.repeat_interleave(s.h // s.kv, dim=1)
            v = v.repeat_interleave(s.h // s.kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + s.c_proj(y.transpose(1, 2).reshape(Bq, Tq, C))
        n2 = s.ln_2(x) if s.arch == "gpt2" else rms(x, 1e-6)
        h = s.c_fc(n2)
        h = F.gelu(h, approximate="tanh") if s.arch == "gpt2" else F.relu(h).square()
        return x + s.mlp_proj(h)


class GPT(nn.Module):
    def __init__(s, arch, n_head, n_kv):
        super().__init__()
        s.arch = arch
        s.wte = nn.Embedding(V, C)
        if arch == "gpt2":
            s.wpe = nn.Embedding(T, C)
            s.ln_f = nn.LayerNorm(C)
        else:
            s.lm_head = nn.Linear(C, V, bias=False)
        s.h = nn.ModuleList(Block(arch, n_head, n_kv) for _ in range(L))
        for m in s.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.1)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.normal_(m.bias, 0.0, 0.05)
            if isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, 1.0, 0.1)
                nn.init.normal_(m.bias, 0.0, 0.05)

    def forward(s, idx):
        x = s.wte(idx)
        if s.arch == "gpt2":
            x = x + s.wpe(torch.arange(idx.shape[1]))
        for b in s.h:
            x = b(x)
        if s.arch == "gpt2":
            return s.ln_f(x) @ s.wte.weight.T
        z = rms(x, 1e-6) @ s.lm_head.weight.T
        return 15.0 * torch.tanh(z / 15.0)

    def named(s):
        """(kiln name, tensor) in kiln's internal layout ([out, in] weights)."""
        out = [("wte.weight", s.wte.weight)]
        if s.arch == "gpt2":
            out.append(("wpe.weight", s.wpe.weight))
        for i, b in enumerate(s.h):
            p = f"h.{i}."
            if s.arch == "gpt2":
                out += [(p + "ln_1.weight", b.ln_1.weight), (p + "ln_1.bias", b.ln_1.bias)]
            out.append((p + "attn.c_attn.weight", b.c_attn.weight))
            if s.arch == "gpt2":
                out.append((p + "attn.c_attn.bias", b.c_attn.bias))
            out.append((p + "attn.c_proj.weight", b.c_proj.weight))
            if s.arch == "gpt2":
                out += [(p + "attn.c_proj.bias", b.c_proj.bias), (p + "ln_2.weight", b.ln_2.weight),
                        (p + "ln_2.bias", b.ln_2.bias)]
            out.append((p + "mlp.c_fc.weight", b.c_fc.weight))
            if s.arch == "gpt2":
                out.append((p + "mlp.c_fc.bias", b.c_fc.bias))
            out.append((p + "mlp.c_proj.weight", b.mlp_proj.weight))
            if s.arch == "gpt2":
                out.append((p + "mlp.c_proj.bias", b.mlp_proj.bias))
        if s.arch == "gpt2":
            out += [("ln_f.weight", s.ln_f.weight), ("ln_f.bias", s.ln_f.bias)]
        else:
            out.append(("lm_head.weight", s.lm_head.weight))
        return out


CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def make(arch, n_head, n_kv):
    torch.manual_seed(1234 if arch == "gpt2" else 4321)
    model = GPT(arch, n_head, n_kv)
    g = torch.Generator().manual_seed(7)
    data = torch.randint(0, V, (B, T + 1), generator=g)
    x, y = data[:, :-1], data[:, 1:]
    w = torch.rand(B, T, generator=g)
    w[0, :3] = 0.0  # a masked prefix, as SFT would have

    def weighted_loss():
        logits = model(x)
        ce = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction="none")
        return logits, (ce * w.reshape(-1)).sum() / w.sum()

    d = os.path.join(OUT, arch)
    os.makedirs(d, exist_ok=True)
    weights = {}
    for name, t in model.named():
        a = t.detach().numpy()
        if arch == "gpt2" and name.endswith(CONV1D):
            a = a.T
        weights[name] = a
    write_safetensors(os.path.join(d, "model.safetensors"), weights)
    if arch == "gpt2":
        cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V, "n_positions": T,
               "n_ctx": T, "n_embd": C, "n_layer": L, "n_head": n_head, "layer_norm_epsilon": 1e-5,
               "activation_function": "gelu_new"}
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
    else:
        cfg = {"arch": "modern", "vocab_size": V, "n_layer": L, "n_head": n_head, "n_kv_head": n_kv, "n_embd": C,
               "context": T, "norm_eps": 1e-6, "rope_theta": 10000.0, "logit_softcap": 15.0}
        with open(os.path.join(d, "kiln.json"), "w") as f:
            json.dump({"format": "kiln-checkpoint-v1", "config": cfg, "train": None}, f, indent=1)

    logits, loss = weighted_loss()
    loss.backward()
    expect = {"inputs": x.numpy().astype(np.float32), "targets": y.numpy().astype(np.float32),
              "weights": w.numpy(), "logits": logits.detach().numpy(), "loss": np.array([loss.item()])}
    for name, t in model.named():
        expect["grad." + name] = t.grad.numpy()  # kiln layout [out, in]
    # three AdamW steps (PyTorch defaults: decay on every tensor), losses after each update
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt.step()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        _, l = weighted_loss()
        losses.append(l.item())
        l.backward()
        opt.step()
    expect["step_losses"] = np.array(losses)
    write_safetensors(os.path.join(d, "expect.safetensors"), expect)
    print(arch, "loss", loss.item(), "step losses", losses)


if __name__ == "__main__":
    torch.set_num_threads(1)
    make("gpt2", 2, 2)
    make("modern", 4, 2)

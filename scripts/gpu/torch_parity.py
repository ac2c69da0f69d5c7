"""The PyTorch side of the learning-parity check (issue 20): train the GPT-2 that `kiln pretrain
--arch gpt2` trains, on the windows kiln's loader hands out, in the same order, with kiln's
optimizer, schedule and clipping, and log losses in kiln's metrics format.

  python3 torch_parity.py --batches DIR --kiln-metrics RUN/metrics.jsonl --out torch.jsonl
                          [--init kiln|torch] [--seed N] [--device cuda|cpu] [--precision bf16|f32]

DIR comes from `cargo run -p kiln-train --example parity_batches` (train/val windows, kiln's initial
parameters, meta.json). The run's settings (model, lr, betas, eps, weight decay and which tensors
decay, gradient clip, warmup/warmdown, eval cadence) are read from the `start` line of kiln's
metrics, so both sides cannot drift apart by a flag.
--init kiln loads the exact parameters kiln started from (the same draw, so what differs is only
the arithmetic); --init torch draws kiln's scheme (N(0, 0.02), residual projections
0.02/sqrt(2L), zero biases, unit gains) from torch.manual_seed(--seed): two such seeds measure
run-to-run noise.
Model: learned positions, pre-LayerNorm (eps from kiln's config), causal attention, GELU(tanh)
MLP 4x, tied head; bf16 autocast on cuda with the logits' cross-entropy in f32, as PyTorch users
train GPT-2 (torch_ref.py, nanoGPT).
"""
import argparse, json, math, os, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(s, d, h, eps):
        super().__init__()
        s.h = h
        s.ln_1, s.ln_2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        s.c_attn, s.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        s.c_fc, s.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(s, x):
        B, T, C = x.shape
        q, k, v = s.c_attn(s.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, s.h, C // s.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + s.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + s.mlp_proj(F.gelu(s.c_fc(s.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(s, vocab, ctx, layers, heads, dim, eps):
        super().__init__()
        s.wte, s.wpe = nn.Embedding(vocab, dim), nn.Embedding(ctx, dim)
        s.h = nn.ModuleList(Block(dim, heads, eps) for _ in range(layers))
        s.ln_f = nn.LayerNorm(dim, eps=eps)

    def forward(s, idx):
        x = s.wte(idx) + s.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in s.h:
            x = b(x)
        return s.ln_f(x) @ s.wte.weight.T

    def kiln_names(s):
        """kiln's tensor name -> this model's parameter."""
        m = {"wte.weight": s.wte.weight, "wpe.weight": s.wpe.weight,
             "ln_f.weight": s.ln_f.weight, "ln_f.bias": s.ln_f.bias}
        for i, b in enumerate(s.h):
            for kiln, mod in [("ln_1", b.ln_1), ("ln_2", b.ln_2), ("attn.c_attn", b.c_attn),
                              ("attn.c_proj", b.attn_proj), ("mlp.c_fc", b.c_fc),
                              ("mlp.c_proj", b.mlp_proj)]:
                m[f"h.{i}.{kiln}.weight"] = mod.weight
                m[f"h.{i}.{kiln}.bias"] = mod.bias
        return m


def lr_scale(step, total, warmup, warmdown_frac, final_frac):
    """kiln's Schedule::lr_scale (crates/kiln-train/src/schedule.rs), 0-based step."""
    if step < warmup:
        return (step + 1) / warmup
    total = max(total, 1)
    warmdown = int(round(total * warmdown_frac))
    start = max(total - warmdown, 0)
    if warmdown == 0 or step < start:
        return 1.0
    prog = min((step - start) / warmdown, 1.0)
    return 1.0 - prog * (1.0 - final_frac)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", required=True)
    ap.add_argument("--kiln-metrics", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--init", choices=["kiln", "torch"], default="kiln")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["bf16", "f32"], default=None)
    a = ap.parse_args()
    dev = a.device
    prec = a.precision or ("bf16" if dev == "cuda" else "f32")

    start = None
    with open(a.kiln_metrics) as f:
        for line in f:
            r = json.loads(line)
            if r.get("event") == "start":
                start = r
                break
    if start is None:
        sys.exit(f"{a.kiln_metrics}: no start line with the run's config")
    cfg, mc, oc = start["config"], start["config"]["model"], start["config"]["optim"]
    meta = json.load(open(os.path.join(a.batches, "meta.json")))
    for k_meta, k_cfg in [("batch", cfg["batch"]), ("seq", cfg["seq_len"]), ("seed", cfg["seed"]),
                          ("vocab", mc["vocab_size"]), ("layers", mc["n_layer"]),
                          ("dim", mc["n_embd"])]:
        if meta[k_meta] != k_cfg:
            sys.exit(f"batches' {k_meta} {meta[k_meta]} != the kiln run's {k_cfg}")
    if mc["arch"] != "gpt2" or oc["kind"] not in ("adamw", "AdamW") or cfg["grad_accum"] != 1:
        sys.exit(f"only gpt2 + AdamW without accumulation is mirrored here (got {mc['arch']}, "
                 f"{oc['kind']}, accum {cfg['grad_accum']})")
    steps, B, T = cfg["steps"], cfg["batch"], cfg["seq_len"]
    if meta["steps"] < steps:
        sys.exit(f"batches hold {meta['steps']} steps, the run takes {steps}")
    dt = np.uint16 if meta["dtype"] == "u16" else np.uint32
    train = np.fromfile(os.path.join(a.batches, "train." + meta["dtype"]), dtype=dt)
    train = train.reshape(meta["steps"], B, T + 1)
    val = np.fromfile(os.path.join(a.batches, "val." + meta["dtype"]), dtype=dt)
    val = torch.from_numpy(val.astype(np.int64).reshape(meta["val_batches"], B, T + 1)).to(dev)

    torch.manual_seed(a.seed)
    L, C = mc["n_layer"], mc["n_embd"]
    model = GPT(mc["vocab_size"], mc["context"], L, mc["n_head"], C, mc.get("norm_eps", 1e-5))
    named = model.kiln_names()
    with torch.no_grad():
        if a.init == "kiln":
            init = np.fromfile(os.path.join(a.batches, "init.f32"), dtype=np.float32)
            for t in meta["tensors"]:
                n = int(np.prod(t["shape"]))
                named[t["name"]].copy_(torch.from_numpy(init[t["offset"]:t["offset"] + n]
                                                        .reshape(t["shape"])))
            assert len(meta["tensors"]) == len(named), "tensor lists differ"
        else:
            proj_std = 0.02 / math.sqrt(2 * L)
            for name, p in named.items():
                if p.dim() == 1:
                    p.fill_(0.0 if name.endswith("bias") else 1.0)
                else:
                    p.normal_(0.0, proj_std if name.endswith("c_proj.weight") else 0.02)
    model.to(dev)
    # kiln: embeddings and matrices decay, vectors (gains, biases) only with decay_vectors
    decay = [p for p in named.values() if p.dim() > 1 or oc.get("decay_vectors")]
    plain = [p for p in named.values() if not (p.dim() > 1 or oc.get("decay_vectors"))]
    groups = [{"params": decay, "weight_decay": oc["weight_decay"]},
              {"params": plain, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=oc["lr"], betas=(oc["beta1"], oc["beta2"]), eps=oc["eps"],
                            fused=(dev == "cuda"))
    base_lr = oc["lr"]
    clip = oc.get("grad_clip")
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ac = (torch.autocast("cuda", dtype=torch.bfloat16) if prec == "bf16" and dev == "cuda"
          else torch.autocast(dev, enabled=False))
    V = mc["vocab_size"]

    def evaluate():
        model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for w in val:
                with ac:
                    logits = model(w[:, :-1])
                l = F.cross_entropy(logits.float().view(-1, V), w[:, 1:].reshape(-1), reduction="sum")
                tot += l.item()
                n += w[:, 1:].numel()
        model.train()
        return tot / max(n, 1)

    out = open(a.out, "w")
    out.write(json.dumps({"event": "start", "impl": "torch", "torch": torch.__version__,
                          "init": a.init, "seed": a.seed, "device": dev, "precision": prec,
                          "gpu": torch.cuda.get_device_name() if dev == "cuda" else None}) + "\n")
    t_start = time.time()
    for step in range(steps):
        t0 = time.time()
        w = torch.from_numpy(train[step].astype(np.int64)).to(dev, non_blocking=True)
        with ac:
            logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.float().view(-1, V), w[:, 1:].reshape(-1))
        loss.backward()
        gn = (torch.nn.utils.clip_grad_norm_(model.parameters(), clip) if clip
              else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
        s = lr_scale(step, steps, cfg["warmup_steps"], cfg["warmdown_frac"], cfg["final_lr_frac"])
        for g in opt.param_groups:
            g["lr"] = base_lr * s
        opt.step()
        opt.zero_grad(set_to_none=True)
        lv = loss.item()
        done = step + 1
        out.write(json.dumps({"step": done, "loss": lv, "lr_scale": s, "grad_norm": gn.item(),
                              "tok_per_s": B * T / (time.time() - t0)}) + "\n")
        ev = cfg["eval_every"]
        if ev and (done % ev == 0 or done == steps):
            v = evaluate()
            out.write(json.dumps({"event": "eval", "step": done, "val_loss": v}) + "\n")
            print(f"torch init={a.init} seed={a.seed} step {done}: loss {lv:.4f} val {v:.4f}",
                  flush=True)
        out.flush()
    print(json.dumps({"impl": "torch", "init": a.init, "seed": a.seed, "steps": steps,
                      "seconds": round(time.time() - t_start, 1)}), flush=True)


if __name__ == "__main__":
    main()

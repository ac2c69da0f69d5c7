"""Write the PyTorch reference for kiln's reward model (crates/kiln-train/tests/fixtures/rm/).

Usage: python3 scripts/rm_fixture.py   (needs torch + numpy; the outputs are committed so the Rust
test needs neither)

The trunks are kiln-engine's parity fixtures (scripts/engine_fixtures.py rebuilds them from the same
seeds, so its committed checkpoints are the weights used here). On top: a scalar head
`r = w · h_last + b`, `h_last` the final-norm hidden state at each row's last real token. Two
orderings (over 3 and 2 samples, rows of different lengths, padded) imply 3 + 1 pairs; the
Bradley–Terry loss is the mean over pairs of `-log σ(r_better - r_worse)`. Autograd gives the
rewards, the loss, and the gradient of the head and of every trunk parameter.
"""
import os, sys
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import engine_fixtures as ef  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "kiln-train", "tests", "fixtures", "rm")
ROWS = 5
LENS = [16, 9, 12, 5, 14]  # real tokens per row (the rest is padding the head never reads)
ORDERINGS = [[2, 0, 1], [3, 4]]  # best first, row indices


def make(arch, n_head, n_kv, seed):
    torch.manual_seed(seed)  # exactly as engine_fixtures.make builds the committed checkpoint
    model = ef.GPT(arch, n_head, n_kv).double()
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, ef.V, (ROWS, ef.T), generator=g)
    w = (torch.randn(ef.C, generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    b = torch.tensor([0.1], dtype=torch.float64, requires_grad=True)

    h = model.wte(x)
    if arch == "gpt2":
        h = h + model.wpe(torch.arange(ef.T))
    for blk in model.h:
        h = blk(h)
    h = model.ln_f(h) if arch == "gpt2" else ef.rms(h, 1e-6)
    last = torch.tensor([n - 1 for n in LENS])
    r = h[torch.arange(ROWS), last] @ w + b
    pairs = [(o[i], o[j]) for o in ORDERINGS for i in range(len(o)) for j in range(i + 1, len(o))]
    loss = torch.stack([-F.logsigmoid(r[a] - r[z]) for a, z in pairs]).mean()
    loss.backward()
    expect = {"inputs": x.numpy().astype(np.float32), "rewards": r.detach().numpy(),
              "loss": np.array([loss.item()]), "grad.head.weight": w.grad.numpy(),
              "grad.head.bias": b.grad.numpy(), "head.weight": w.detach().numpy(),
              "head.bias": b.detach().numpy()}
    for name, t in model.named():
        if t.grad is not None:
            expect["grad." + name] = t.grad.numpy()
    os.makedirs(OUT, exist_ok=True)
    ef.write_safetensors(os.path.join(OUT, f"{arch}.safetensors"), expect)
    print(arch, "loss", loss.item(), "rewards", r.detach().numpy())


if __name__ == "__main__":
    torch.set_num_threads(1)
    make("gpt2", 2, 2, 1234)
    make("modern", 4, 2, 4321)

"""Write the PyTorch reference for kiln's GRPO-family loss (crates/kiln-train/tests/fixtures/rl_loss.json).

Usage: python3 scripts/rl_loss_fixture.py   (needs torch; the output is committed so the Rust test
needs nothing)

Fixed logits [N, V] for the response tokens of 6 sequences (2 groups of 3), their targets, old-policy
and reference log-probs (the current ones plus noise, so some ratios fall outside the clip range),
rewards → group advantages. For each case (normalisation × KL) autograd gives the loss and its
gradient w.r.t. the logits; the Rust test computes the same with kiln's loss weights and the
engine's cross-entropy kernel.
"""
import json, os
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "kiln-train", "tests", "fixtures", "rl_loss.json")
torch.manual_seed(0)
V = 11
LENS = [3, 5, 1, 4, 2, 6]
GROUP = 3
MAX_NEW = 8
CLIP = 0.2
N = sum(LENS)
logits = torch.randn(N, V, dtype=torch.float64) * 2.0
targets = torch.randint(0, V, (N,))
lp0 = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
old = lp0 + 0.3 * torch.randn(N, dtype=torch.float64)
ref = lp0 + 0.5 * torch.randn(N, dtype=torch.float64)
rewards = torch.tensor([1.0, 0.0, 0.1, 1.1, 1.0, 0.0], dtype=torch.float64)


def advantages(std_scale):
    r = rewards.view(-1, GROUP)
    a = r - r.mean(1, keepdim=True)
    if std_scale:
        a = a / (r.std(1, keepdim=True) + 1e-4)  # unbiased std, as TRL
    return a.reshape(-1)


def case(kind, kl, std_scale, use_old):
    z = logits.clone().requires_grad_(True)
    lp = torch.log_softmax(z, -1).gather(1, targets[:, None])[:, 0]
    adv = advantages(std_scale)
    seq = torch.repeat_interleave(torch.arange(len(LENS)), torch.tensor(LENS))
    a = adv[seq]
    o = old if use_old else lp.detach()
    ratio = torch.exp(lp - o)
    per = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - CLIP, 1 + CLIP) * a)
    if kl > 0:
        d = ref - lp
        per = per + kl * (torch.exp(d) - d - 1)
    S = len(LENS)
    if kind == "grpo":
        lens = torch.tensor(LENS, dtype=torch.float64)[seq]
        loss = (per / lens).sum() / S
    elif kind == "dr-grpo":
        loss = per.sum() / (S * MAX_NEW)
    else:  # dapo
        loss = per.sum() / N
    loss.backward()
    return {"kind": kind, "kl": kl, "std_scale": std_scale, "use_old": use_old,
            "adv": adv.tolist(), "loss": loss.item(), "grad": z.grad.reshape(-1).tolist()}


cases = [
    case("grpo", 0.0, True, True),
    case("dr-grpo", 0.0, False, True),
    case("dapo", 0.0, True, True),
    case("dapo", 0.0, True, False),
    case("grpo", 0.05, True, True),
    case("dr-grpo", 0.1, False, False),
]
os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w") as f:
    json.dump({"vocab": V, "lens": LENS, "group": GROUP, "max_new": MAX_NEW, "clip": CLIP,
               "logits": logits.reshape(-1).tolist(), "targets": targets.tolist(),
               "old_logp": old.tolist(), "ref_logp": ref.tolist(), "rewards": rewards.tolist(),
               "cases": cases}, f)
print("wrote", OUT, len(cases), "cases")

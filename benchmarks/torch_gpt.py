"""PyTorch eager reference of scaling/model.py's architecture, timed like benchmarks/train_step.py.

Run by benchmarks/vs_torch.py inside its own torch environment (torch is NOT a project dependency):

    TORCH_PY benchmarks/torch_gpt.py step --d-model 256 --n-layers 4 --batch 16 --seq 256 --vocab 8192
    TORCH_PY benchmarks/torch_gpt.py components --d-model 256 --n-layers 4 ...

Same architecture and arithmetic as ours: pre-norm, no biases, RMSNorm (eps 1e-6, f32), RoPE
(rotate-half over the full head dim), causal multi-head attention through
F.scaled_dot_product_attention (torch's own CPU kernel, blockwise), SwiGLU with d_ff = 8/3 d
rounded up to 64, tied LM head, cross-entropy, global-norm clipping at 1.0 and AdamW
(b = 0.9/0.95, wd 0.1 on matrices only), float32 throughout. Prints one JSON line on stdout.
Imports nothing from the project (the torch environment has no JAX).
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn


def d_ff_of(d_model: int) -> int:
    return 64 * math.ceil(8 * d_model / 3 / 64)  # scaling.accounting.d_ff_of for SwiGLU


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps, self.scale = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def rope_tables(T: int, K: int, theta: float = 10000.0):
    inv_freq = theta ** (-torch.arange(0, K, 2, dtype=torch.float32) / K)
    angle_TK = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cos(angle_TK), torch.sin(angle_TK)  # [T, K/2] each


def rope(x_BHTK, cos_TK, sin_TK):
    x1, x2 = x_BHTK.chunk(2, dim=-1)
    return torch.cat([x1 * cos_TK - x2 * sin_TK, x2 * cos_TK + x1 * sin_TK], dim=-1)


class Attention(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.h, self.k = n_heads, d // n_heads
        self.wqkv = nn.Linear(d, 3 * d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)

    def qkv(self, x_BTD, cos, sin):
        B, T, D = x_BTD.shape
        q, k, v = self.wqkv(x_BTD).view(B, T, 3, self.h, self.k).permute(2, 0, 3, 1, 4)
        return rope(q, cos, sin), rope(k, cos, sin), v  # [B, H, T, K]

    def forward(self, x_BTD, cos, sin):
        B, T, D = x_BTD.shape
        q, k, v = self.qkv(x_BTD, cos, sin)
        o_BHTK = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(o_BHTK.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        f = d_ff_of(d)
        self.w_gate, self.w_up = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.w_down = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(d), Attention(d, n_heads)
        self.mlp_norm, self.mlp = RMSNorm(d), MLP(d)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, d: int, n_layers: int, n_heads: int, seq: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, n_heads) for _ in range(n_layers))
        self.final_norm = RMSNorm(d)
        cos, sin = rope_tables(seq, d // n_heads)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)
        for name, p in self.named_parameters():
            if p.ndim == 2:
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("wo.weight", "w_down.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, tokens_BT, targets_BT):
        x = self.embedding(tokens_BT)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        logits_BTV = self.final_norm(x) @ self.embedding.weight.T  # tied head
        return F.cross_entropy(logits_BTV.view(-1, logits_BTV.shape[-1]), targets_BT.view(-1))


def make_optimizer(model):
    decay = [p for p in model.parameters() if p.ndim == 2 and p is not model.embedding.weight]
    rest = [p for p in model.parameters() if not (p.ndim == 2 and p is not model.embedding.weight)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=3e-3, betas=(0.9, 0.95), eps=1e-8)


def train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def timed(fn, steps: int) -> float:
    """Mean seconds per call over `steps` calls after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def setup(args):
    torch.manual_seed(0)
    model = GPT(args.vocab, args.d_model, args.n_layers, args.d_model // 64, args.seq)
    x = torch.randint(0, args.vocab, (args.batch, args.seq))
    y = torch.randint(0, args.vocab, (args.batch, args.seq))
    return model, x, y


def run_step(args) -> dict:
    model, x, y = setup(args)
    opt = make_optimizer(model)
    dt = timed(lambda: train_step(model, opt, x, y), args.steps)
    return {"impl": "torch", "seconds_per_step": dt, "tokens_per_s": args.batch * args.seq / dt}


def fwd_bwd(fn, inputs, steps: int) -> tuple[float, float]:
    """(forward seconds, backward seconds) of fn(*inputs) -> tensor, backward from a ones cotangent."""
    def forward():
        with torch.no_grad():
            fn(*inputs)

    def both():
        for t in inputs:
            t.grad = None
        out = fn(*inputs)
        out.backward(torch.ones_like(out))

    f, fb = timed(forward, steps), timed(both, steps)
    return f, max(fb - f, 0.0)


def run_components(args) -> dict:
    """Forward and backward seconds of each component over the whole model (x n_layers where per block)."""
    model, x_tok, y = setup(args)
    B, T, D, L = args.batch, args.seq, args.d_model, args.n_layers
    blk = model.blocks[0]
    leaf = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
    x_BTD = leaf(B, T, D)
    q, k, v = (leaf(B, D // 64, T, 64) for _ in range(3))
    out, n = {}, args.steps
    def proj(a):  # the q/k/v projections (+ RoPE) and the output projection, as in our benchmark
        q, k, v = blk.attn.qkv(a, model.cos, model.sin)
        return blk.attn.wo((q + k + v).transpose(1, 2).reshape(B, T, D))

    for name, fn, inputs, reps in (
            ("attention core", lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True), (q, k, v), L),
            ("mlp", lambda a: blk.mlp(a), (x_BTD,), L),
            ("projections", proj, (x_BTD,), L),
            ("norms", lambda a: blk.mlp_norm(blk.attn_norm(a)), (x_BTD,), L),
            ("head+loss", lambda a: F.cross_entropy((model.final_norm(a) @ model.embedding.weight.T).view(-1, args.vocab),
                                                    y.view(-1)), (x_BTD,), 1)):
        f, b = fwd_bwd(fn, inputs, n)
        out[name] = {"forward": f * reps, "backward": b * reps}
    opt = make_optimizer(model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    out["optimizer"] = {"forward": timed(lambda: (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0), opt.step()), n),
                        "backward": 0.0}
    return {"impl": "torch", "components": out}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["step", "components"])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    result = run_step(args) if args.mode == "step" else run_components(args)
    result["threads"] = torch.get_num_threads()
    result["version"] = torch.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()

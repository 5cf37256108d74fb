"""Why is the rotary backward kernel slow? One attention block of `tiny` (B 128, S 256, 6 heads of
64), forward + backward under torch.compile, in several formulations, timed with CUDA events and
with the top kernels listed.

Found on an H100 (docs/benchmarks.md, training runs 4-5): in a `tiny` step the compiler's fused
RoPE-backward kernel takes ~310 us per layer against ~46 us for the forward one, ~1.8 ms of a
13 ms step, and rotating in the [B, S, H, hd] layout before the head transpose did not change it.
Variants:
  bhsd        the model's code: view -> transpose -> rotate (cat of halves) -> SDPA
  bshd        rotate in [B, S, H, hd], then transpose (torchtitan's order)
  contiguous  bshd, then .contiguous() q/k/v in [B, H, S, hd] before SDPA
  flash       bhsd with SDPA pinned to the flash kernel (cuDNN is PyTorch's pick here)
  kernel      codediff's Triton split + rotate (codediff/rope_kernel.py), one kernel each way
  function    bhsd through an autograd.Function whose backward is the forward rotation by -angle
              (the rotation's transpose), so the compiler sees the same pointwise pattern twice
  noqk        no rotation at all (the floor the others are measured against)

  python bench/rope_backward.py            # one H100, ~1 min
  python bench/rope_backward.py --device cpu --batch 2 --seq 32   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Rotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, g):
        cos, sin = ctx.saved_tensors
        return rotate(g, cos, -sin), None, None


def block(variant: str, x: torch.Tensor, w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
          heads: int) -> torch.Tensor:
    B, S, D = x.shape
    hd = D // heads
    if variant == "kernel":
        from codediff.rope_kernel import rope_qkv

        q, k, v = rope_qkv(x @ w.t(), cos, sin, heads, heads).split(heads, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(B, S, D)
    q, k, v = (x @ w.t()).split(D, dim=-1)
    q, k, v = (t.view(B, S, heads, hd) for t in (q, k, v))
    if variant == "function":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        c, s = cos[None, None].to(q.dtype), sin[None, None].to(q.dtype)
        q, k = Rotate.apply(q, c, s), Rotate.apply(k, c, s)
    elif variant in ("bhsd", "flash"):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        c, s = cos[None, None], sin[None, None]  # [1, 1, S, hd/2]
        q, k = rotate(q, c.to(q.dtype), s.to(q.dtype)), rotate(k, c.to(k.dtype), s.to(k.dtype))
    elif variant in ("bshd", "contiguous"):
        c, s = cos[None, :, None], sin[None, :, None]  # [1, S, 1, hd/2]
        q, k = rotate(q, c.to(q.dtype), s.to(q.dtype)), rotate(k, c.to(k.dtype), s.to(k.dtype))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if variant == "contiguous":
            q, k, v = (t.contiguous() for t in (q, k, v))
    else:  # noqk
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, S, D)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--variants", default="bhsd,kernel,bshd,flash,function,noqk")
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    D, hd = args.d_model, args.d_model // args.heads
    torch.manual_seed(0)
    x0 = torch.randn(args.batch, args.seq, D, device=dev, dtype=dtype)
    w = (torch.randn(3 * D, D, device=dev, dtype=dtype) * D ** -0.5).requires_grad_()
    inv = 10000.0 ** (-torch.arange(0, hd, 2, device=dev, dtype=torch.float32) / hd)
    ang = torch.arange(args.seq, device=dev, dtype=torch.float32)[:, None] * inv
    cos, sin = ang.cos(), ang.sin()
    dout = torch.randn(args.batch, args.seq, D, device=dev, dtype=dtype)  # random upstream grad
    ref = None  # the model's formulation (bhsd): every rotation variant must match it
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    rows, failed = [], []
    variants = args.variants.split(",")
    if "bhsd" in variants:  # the reference goes first
        variants = ["bhsd"] + [v for v in variants if v != "bhsd"]
    for variant in variants:
        fn = torch.compile(lambda x, v=variant: block(v, x, w, cos, sin, args.heads))
        pin = contextlib.nullcontext()
        if variant == "flash" and dev.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            pin = sdpa_kernel([SDPBackend.FLASH_ATTENTION])
        x = x0.clone().requires_grad_()
        with pin:
            def step(fn=fn, x=x):
                out = fn(x)
                out.backward(dout)
                return out

            w.grad = None
            out = step()  # compile; then check outputs and both input gradients
            err = float("nan")
            if variant != "noqk":
                got = torch.cat([t.detach().flatten().float() for t in (out, x.grad, w.grad)])
                if variant == "bhsd":
                    ref = got
                if ref is not None:
                    err = ((got - ref).norm() / ref.norm()).item()
                    if not err < tol:
                        failed.append(variant)
            # back-to-back iterations between two events: GPU time, launch gaps hidden
            for _ in range(3):
                step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(args.reps):
                    step()
                b.record()
                b.synchronize()
                med = a.elapsed_time(b) * 1e3 / args.reps
            else:
                import time

                t0 = time.perf_counter()
                for _ in range(args.reps):
                    step()
                med = (time.perf_counter() - t0) * 1e6 / args.reps
            x.grad = None
            w.grad = None
            top = ""
            if dev.type == "cuda":
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    step()
                    torch.cuda.synchronize()
                evs = sorted((e for e in prof.key_averages() if e.device_time_total > 0),
                             key=lambda e: -e.device_time_total)[:4]
                top = "; ".join(f"{e.key[:48]} {e.device_time_total:.0f}us" for e in evs)
        rows.append((variant, med, err, top))
        print(f"{variant:<11} {med:9.1f} us/iter  rel.err vs bhsd {err:.1e}  {top}", flush=True)
    base = next((m for v, m, _, _ in rows if v == "noqk"), None)
    if base:
        print("\nrotation cost over no rotation:")
        for v, m, _, _ in rows:
            print(f"  {v:<11} {m - base:+9.1f} us")
    if failed:
        print(f"FAILED: {', '.join(failed)} differ from bhsd by more than {tol}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

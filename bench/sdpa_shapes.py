"""Does SDPA pay per new shape? Attention calls whose key length changes every call (AR decoding
with a growing KV cache; DLM prompts of different lengths) against the same calls at one fixed
shape, with PyTorch's default kernel choice and with cuDNN attention excluded.

Suspicion (H100 generation run, 2026-11-27): AR decoding took ~50 ms a step whatever the batch,
while a DLM forward of the same model took ~5 ms. cuDNN attention, PyTorch's first pick on an
H100, builds an execution plan for each new shape; a decode step has a new key length every time.

  python bench/sdpa_shapes.py          # one GPU, ~20 s
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
import torch.nn.functional as F


def run(q_len: int, keys: list[int], B: int, H: int, hd: int, ctx, dev) -> float:
    """Mean ms per call over `keys` (one call per key length), boolean mask as our model's."""
    times = []
    for K in keys:
        q = torch.randn(B, H, q_len, hd, device=dev, dtype=torch.bfloat16)
        k = torch.randn(B, H, K, hd, device=dev, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        mask = torch.ones(B, 1, q_len, K, dtype=torch.bool, device=dev)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with ctx():
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=40)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a GPU")
        return 2
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    B, H, hd = 1, 6, 64
    ctxs = {"default": contextlib.nullcontext,
            "no-cudnn": lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION,
                                             SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])}
    print(torch.cuda.get_device_name(), torch.__version__)
    print(f"{'case':<34} {'default ms':>11} {'no-cudnn ms':>12} {'ratio':>7}")
    base = 3000  # past the shapes any earlier case used
    for name, q_len, growing in (("decode, key length +1 per call", 1, True),
                                 ("decode, one key length", 1, False),
                                 ("32-query block, new length", 32, True),
                                 ("32-query block, one length", 32, False)):
        res = {}
        for cname, ctx in ctxs.items():
            keys = [base + i for i in range(args.calls)] if growing else [base] * args.calls
            base += args.calls + 1
            run(q_len, keys[:1] if not growing else [base + 10_000], B, H, hd, ctx, dev)  # warm
            res[cname] = run(q_len, keys, B, H, hd, ctx, dev)
        print(f"{name:<34} {res['default']:>11.3f} {res['no-cudnn']:>12.3f} "
              f"{res['default'] / res['no-cudnn']:>6.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

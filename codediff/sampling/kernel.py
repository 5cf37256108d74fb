"""The greedy proposal and its probability in one pass over the vocabulary (Triton, CUDA).

At temperature 0 with the `prob` score (LLaDA `low_confidence`, Fast-dLLM `threshold` and
`factor`) a diffusion step needs, per position, only the argmax token x0 and its softmax
probability, computed in float64 as LLaDA does. In PyTorch that is an argmax, a cast of the
logits to float64, a float64 log-softmax and a gather: several passes over [B, block, vocab],
0.6 ms of a 3.5 ms dual-cache step at batch 128 on an H100 (bench/profile_dlm.py). This kernel
reads each row of logits once: a running max (with the first index reaching it, as torch.argmax
picks) and a running sum of exp(logit - max) in float64, rescaled when the max grows. The
probability of x0 is then 1 / sum (its logit is the max), taken as exp(-log(sum)) like
exp(log_softmax) is.

Numerics: the sum is taken in another order than PyTorch's softmax, so a probability can differ
from `rules.propose`'s in the last bits of a float64 (measured against it in
tests/test_sampler_kernel.py); x0 is the same token. Generation uses the kernel for every such
step on CUDA, graphed or not, so graphed and eager samples stay identical.
CODEDIFF_FUSED_SAMPLER=0 turns it off (the plain PyTorch path).
"""

from __future__ import annotations

import os

import torch

try:  # triton ships with CUDA builds of torch; CPU-only installs do without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = None

BLOCK_V = 1024  # vocabulary entries a program reads at a time


def usable(logits: torch.Tensor) -> bool:
    """Triton is there, the logits are float32 on CUDA with contiguous rows, and
    CODEDIFF_FUSED_SAMPLER is not 0."""
    return triton is not None and logits.is_cuda and logits.dtype == torch.float32 \
        and logits.stride(-1) == 1 and os.environ.get("CODEDIFF_FUSED_SAMPLER", "1") != "0"


if triton is not None:

    @triton.jit
    def _argmax_prob(logits, x0_out, conf_out, row_stride, V: tl.constexpr,
                     BLOCK: tl.constexpr):
        # one program per row (a position): a single pass over its V logits (V is a constant:
        # one compile per vocabulary size; Triton's interpreter also needs a constant bound)
        row = tl.program_id(0)
        base = logits + row.to(tl.int64) * row_stride
        m = tl.full((), float("-inf"), tl.float64)
        s = tl.zeros((), tl.float64)
        best = tl.zeros((), tl.int64)
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float64)
            cm = tl.max(x, axis=0)
            ci = tl.argmax(x, axis=0, tie_break_left=True)
            # a later chunk takes over only with a strictly larger max: ties keep the first
            best = tl.where(cm > m, start + ci.to(tl.int64), best)
            new_m = tl.maximum(m, cm)
            # rows that are -inf so far contribute nothing (and exp(-inf - -inf) would be nan)
            scale = tl.where(new_m == float("-inf"), 0.0, tl.exp(m - new_m))
            part = tl.where(new_m == float("-inf"), 0.0, tl.sum(tl.exp(x - new_m), axis=0))
            s = s * scale + part
            m = new_m
        tl.store(x0_out + row, best)
        tl.store(conf_out + row, tl.exp(-tl.log(s)))


def argmax_prob(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 = logits.argmax(-1) and softmax(logits.double())[x0], both of shape logits[..., 0]."""
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    n = flat.shape[0]
    x0 = torch.empty(n, dtype=torch.long, device=logits.device)
    conf = torch.empty(n, dtype=torch.float64, device=logits.device)
    if n:
        _argmax_prob[(n,)](flat, x0, conf, flat.stride(0), V=V, BLOCK=BLOCK_V, num_warps=4)
    return x0.view(logits.shape[:-1]), conf.view(logits.shape[:-1])

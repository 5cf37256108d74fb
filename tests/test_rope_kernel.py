"""The fused split + RoPE op (codediff/rope_kernel.py): registration, maths, and the Triton kernel
itself under Triton's CPU interpreter where triton is installed (CUDA builds of torch ship it;
the GPU check is bench/rope_backward.py's `kernel` variant)."""

from __future__ import annotations

import pytest
import torch

from codediff import rope_kernel as rk
from codediff.model import apply_rope, rope_cos_sin
from tests.conftest import run_triton_interpreted

B, S, H, HKV, HD = 2, 40, 3, 1, 16  # S not a multiple of the kernel's 32-row tile; GQA
NH = H + 2 * HKV


def _tables(dtype=torch.float32):
    return rope_cos_sin(torch.arange(S), HD, 10000.0, dtype)


def test_op_registration_passes_opcheck():
    cos, sin = _tables()
    qkv = torch.randn(B, S, NH * HD, requires_grad=True)
    torch.library.opcheck(rk._fwd, (qkv, cos, sin, H, HKV))
    torch.library.opcheck(rk._bwd, (torch.randn(B, NH, S, HD), cos, sin, H, HKV))


def test_op_equals_split_then_rotate_with_gradients():
    cos, sin = _tables(torch.float64)
    qkv = torch.randn(B, S, NH * HD, dtype=torch.float64)
    upstream = torch.randn(B, NH, S, HD, dtype=torch.float64)
    a = qkv.clone().requires_grad_()
    fused = rk.rope_qkv(a, cos, sin, H, HKV).to(torch.float64)
    fused.backward(upstream)
    b = qkv.clone().requires_grad_()
    q, k, v = b.view(B, S, NH, HD).transpose(1, 2).split([H, HKV, HKV], dim=1)
    plain = torch.cat([apply_rope(q, cos[None], sin[None]), apply_rope(k, cos[None], sin[None]),
                       v], dim=1)
    plain.backward(upstream)
    # the op computes in float32 (as the kernel does), so compare at float32 precision
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(rk.triton is None, reason="triton is not installed (CPU-only torch)")
def test_triton_kernel_under_the_interpreter():
    script = f"""
import os, torch, triton
from codediff import rope_kernel as rk
from codediff.model import rope_cos_sin
B, S, H, HKV, HD = {B}, {S}, {H}, {HKV}, {HD}
NH = H + 2 * HKV
cos, sin = rope_cos_sin(torch.arange(S), HD, 10000.0, torch.float32)
qkv = torch.randn(B, S, NH * HD)
out = torch.empty(B, NH, S, HD)
grid = (B * triton.cdiv(S, rk.BLOCK_S), NH)
rk._rope_tile[grid](qkv, out, cos, sin, S, H + HKV, qkv.stride(0), HD, qkv.stride(1),
                    out.stride(0), out.stride(1), out.stride(2), SIGN=1.0, HALF=HD // 2,
                    BLOCK_S=rk.BLOCK_S)
ref = rk._reference(qkv.view(B, S, NH, HD).transpose(1, 2), cos, sin, H + HKV, 1.0)
assert torch.allclose(out, ref, atol=1e-6), (out - ref).abs().max()
g = torch.randn(B, S, NH, HD).transpose(1, 2)  # a strided upstream gradient
dqkv = torch.empty(B, S, NH * HD)
rk._rope_tile[grid](g, dqkv, cos, sin, S, H + HKV, g.stride(0), g.stride(1), g.stride(2),
                    dqkv.stride(0), HD, dqkv.stride(1), SIGN=-1.0, HALF=HD // 2,
                    BLOCK_S=rk.BLOCK_S)
x = qkv.clone().requires_grad_()
rk._reference(x.view(B, S, NH, HD).transpose(1, 2), cos, sin, H + HKV, 1.0).backward(g)
assert torch.allclose(dqkv, x.grad, atol=1e-6), (dqkv - x.grad).abs().max()
print("ok")
"""
    run_triton_interpreted(script)

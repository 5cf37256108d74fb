"""RoPE fused with the q/k/v split, as one Triton kernel each way (training on CUDA).

Why: under torch.compile the rotary backward came out as one Inductor kernel that reads the
q/k/v gradients in [B, H, S, hd] and writes the fused projection's gradient in [B, S, 3 H hd]; on
an H100 it ran at ~0.5 TB/s, 6x slower than its forward (312 us against 46 us a layer of `tiny`,
~12% of a step on `tiny` and on `small`; docs/benchmarks.md). Here both directions are one
kernel over tiles of (batch, 32 positions, one head): each tile reads and writes 128-byte rows,
whatever the two layouts.

`rope_qkv(qkv, cos, sin, n_head, n_kv_head)` takes the projection output [B, S, (H + 2 Hkv) hd]
and returns one tensor [B, H + 2 Hkv, S, hd]: q and k heads rotated, v heads copied. The
caller slices q, k, v out of it (views). Registered as a torch.library op with its own backward
(`triton_op`, so torch.compile launches the kernel from its generated code). On CPU it runs the
same maths in plain PyTorch.

Numerics: the rotation runs in float32 with float32 cos/sin, where the plain path (evaluation,
generation, QK-norm models) rounds cos/sin to the activations' dtype first: a difference of the
order of bf16 rounding. Launches go to the current CUDA device (the trainer sets it per rank).
"""

from __future__ import annotations

import os

import torch

try:  # triton ships with CUDA builds of torch; CPU-only installs do without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = None


def available() -> bool:
    """Triton and a GPU are there, and CODEDIFF_FUSED_ROPE is not 0 (the escape hatch)."""
    return triton is not None and torch.cuda.is_available() and \
        os.environ.get("CODEDIFF_FUSED_ROPE", "1") != "0"


if triton is not None:

    @triton.jit
    def _rope_tile(src, dst, cos, sin, S, NH_ROT,
                   src_b, src_h, src_s, dst_b, dst_h, dst_s,
                   SIGN: tl.constexpr, HALF: tl.constexpr, BLOCK_S: tl.constexpr):
        # program (b * S-blocks + s-block, head): rotate (heads < NH_ROT) or copy one tile
        pid = tl.program_id(0)
        h = tl.program_id(1)
        n_sb = tl.cdiv(S, BLOCK_S)
        b = pid // n_sb
        s = (pid % n_sb) * BLOCK_S + tl.arange(0, BLOCK_S)[:, None]
        d = tl.arange(0, HALF)[None, :]
        m = s < S
        src_row = src + b.to(tl.int64) * src_b + h * src_h + s * src_s
        dst_row = dst + b.to(tl.int64) * dst_b + h * dst_h + s * dst_s
        x1 = tl.load(src_row + d, mask=m).to(tl.float32)
        x2 = tl.load(src_row + HALF + d, mask=m).to(tl.float32)
        rot = h < NH_ROT
        c = tl.where(rot, tl.load(cos + s * HALF + d, mask=m), 1.0)
        sn = tl.where(rot, tl.load(sin + s * HALF + d, mask=m), 0.0) * SIGN
        tl.store(dst_row + d, (x1 * c - x2 * sn).to(dst.dtype.element_ty), mask=m)
        tl.store(dst_row + HALF + d, (x2 * c + x1 * sn).to(dst.dtype.element_ty), mask=m)


BLOCK_S = 32


def _reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_rot: int,
               sign: float) -> torch.Tensor:
    """The kernel's maths on [B, NH, S, hd]: rotate heads < n_rot by sign * angle."""
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    c, s = cos[None, None].float(), sign * sin[None, None].float()
    rotated = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    out = torch.cat((rotated[:, :n_rot], xf[:, n_rot:]), dim=1) if n_rot < x.shape[1] \
        else rotated
    return out.to(x.dtype)


def _fwd_impl(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_head: int,
              n_kv_head: int) -> torch.Tensor:
    B, S, width = qkv.shape
    nh = n_head + 2 * n_kv_head
    hd = width // nh
    n_rot = n_head + n_kv_head
    if not (qkv.is_cuda and triton is not None):
        return _reference(qkv.view(B, S, nh, hd).transpose(1, 2), cos, sin, n_rot, 1.0)
    qkv = qkv if qkv.stride(-1) == 1 else qkv.contiguous()
    out = torch.empty(B, nh, S, hd, dtype=qkv.dtype, device=qkv.device)
    grid = (B * triton.cdiv(S, BLOCK_S), nh)
    _launch(_rope_tile)[grid](qkv, out, cos, sin, S, n_rot,
                              qkv.stride(0), hd, qkv.stride(1), out.stride(0), out.stride(1),
                              out.stride(2), SIGN=1.0, HALF=hd // 2, BLOCK_S=BLOCK_S)
    return out


def _bwd_impl(grad: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_head: int,
              n_kv_head: int) -> torch.Tensor:
    B, nh, S, hd = grad.shape
    n_rot = n_head + n_kv_head
    if not (grad.is_cuda and triton is not None):
        return _reference(grad, cos, sin, n_rot, -1.0).transpose(1, 2).reshape(B, S, nh * hd)
    grad = grad if grad.stride(-1) == 1 else grad.contiguous()
    out = torch.empty(B, S, nh * hd, dtype=grad.dtype, device=grad.device)
    grid = (B * triton.cdiv(S, BLOCK_S), nh)
    _launch(_rope_tile)[grid](grad, out, cos, sin, S, n_rot,
                              grad.stride(0), grad.stride(1), grad.stride(2), out.stride(0), hd,
                              out.stride(1), SIGN=-1.0, HALF=hd // 2, BLOCK_S=BLOCK_S)
    return out


if triton is not None:
    # triton_op: torch.compile sees the kernel launch and emits it in its own generated code,
    # so a compiled step pays no Python dispatch per call (a plain custom op cost ~0.7 ms of
    # host time per call in a compiled `tiny` step without CUDA graphs)
    from torch.library import triton_op, wrap_triton

    _launch = wrap_triton
    _fwd = triton_op("codediff::rope_qkv_fwd", _fwd_impl, mutates_args=())
    _bwd = triton_op("codediff::rope_qkv_bwd", _bwd_impl, mutates_args=())
else:  # CPU-only torch: the same maths as an ordinary custom op
    def _launch(kernel):  # never reached: the impls take the reference path without triton
        raise RuntimeError("triton is not installed")

    _fwd = torch.library.custom_op("codediff::rope_qkv_fwd", _fwd_impl, mutates_args=())
    _bwd = torch.library.custom_op("codediff::rope_qkv_bwd", _bwd_impl, mutates_args=())

    @_fwd.register_fake
    def _(qkv, cos, sin, n_head, n_kv_head):
        B, S, width = qkv.shape
        nh = n_head + 2 * n_kv_head
        return qkv.new_empty(B, nh, S, width // nh)

    @_bwd.register_fake
    def _(grad, cos, sin, n_head, n_kv_head):
        B, nh, S, hd = grad.shape
        return grad.new_empty(B, S, nh * hd)


def _setup(ctx, inputs, output):
    _, cos, sin, n_head, n_kv_head = inputs
    ctx.save_for_backward(cos, sin)
    ctx.heads = (n_head, n_kv_head)


def _backward(ctx, grad):
    cos, sin = ctx.saved_tensors
    return _bwd(grad, cos, sin, *ctx.heads), None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup)


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_head: int,
             n_kv_head: int) -> torch.Tensor:
    """[B, S, (H + 2 Hkv) hd] -> [B, H + 2 Hkv, S, hd], q/k heads rotated by positions 0..S-1.
    cos/sin: [S, hd/2] float32 (the model's tables)."""
    return _fwd(qkv, cos.float().contiguous(), sin.float().contiguous(), n_head, n_kv_head)

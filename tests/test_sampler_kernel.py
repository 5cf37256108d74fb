"""The fused greedy proposal (codediff/sampling/kernel.py) against the plain PyTorch proposal:
the same tokens, probabilities equal to float64 rounding. On a GPU for real; the kernel itself
also under Triton's CPU interpreter where triton is installed (CUDA builds of torch ship it)."""

from __future__ import annotations

import pytest
import torch

from codediff.sampling import kernel as sk
from codediff.sampling import rules as samplers
from tests.conftest import run_triton_interpreted


def hard_logits(B: int, L: int, V: int, device: str) -> torch.Tensor:
    """Logits with what a sampler sees: -inf columns (mask, end-of-text), ties for the max,
    a max in the last partial chunk, a row where one token takes almost all the mass."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(B, L, V, generator=g) * 3).to(device)
    x[..., 1] = float("-inf")
    x[..., V - 3] = float("-inf")
    x[0, 0, 7] = x[0, 0, V - 2] = 50.0        # a tie: the first index wins
    x[0, 1, V - 1] = 60.0                      # the max in the last (partial) chunk
    x[0, 2, 5] = 1e4                           # a probability of 1 to float64 precision
    x[1, 0, :] = float("-inf")
    x[1, 0, 3] = 0.0                           # one finite entry
    x[1, 1, :] = float("-inf")
    x[1, 1, V - 1] = -5.0                      # ... and none before the last chunk
    return x


def plain(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(x.double(), dim=-1)
    x0 = x.argmax(dim=-1)
    return x0, logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1).exp()


@pytest.mark.skipif(not (torch.cuda.is_available() and sk.triton is not None),
                    reason="needs a CUDA GPU and triton (run on the device)")
@pytest.mark.parametrize("V", [320, 8192 + 37])
def test_fused_greedy_proposal_equals_the_plain_one(V):
    x = hard_logits(3, 5, V, "cuda")
    x0, conf = sk.argmax_prob(x)
    want_x0, want_conf = plain(x)
    assert torch.equal(x0, want_x0)
    assert x0[0, 0] == 7 and x0[0, 1] == V - 1 and x0[1, 0] == 3
    torch.testing.assert_close(conf, want_conf, rtol=1e-13, atol=0)
    # propose() takes it at temperature 0 with the prob score, and only there
    assert sk.usable(x)
    got = samplers.propose(x, 0.0, "prob", need_entropy=False)
    assert torch.equal(got[0], want_x0) and got[2] is None
    torch.testing.assert_close(got[1], want_conf, rtol=1e-13, atol=0)


@pytest.mark.skipif(sk.triton is None, reason="triton is not installed (CPU-only torch)")
def test_fused_greedy_proposal_under_the_interpreter():
    script = """
import torch
from codediff.sampling import kernel as sk
from tests.test_sampler_kernel import hard_logits, plain
for V in (320, 8192 + 37):
    x = hard_logits(2, 3, V, "cpu")
    n = x.shape[0] * x.shape[1]
    x0 = torch.empty(n, dtype=torch.long)
    conf = torch.empty(n, dtype=torch.float64)
    flat = x.reshape(n, V)
    sk._argmax_prob[(n,)](flat, x0, conf, flat.stride(0), V=V, BLOCK=sk.BLOCK_V)
    want_x0, want_conf = plain(x)
    assert torch.equal(x0.view(2, 3), want_x0), (x0, want_x0)
    torch.testing.assert_close(conf.view(2, 3), want_conf, rtol=1e-13, atol=0)
print("ok")
"""
    run_triton_interpreted(script)


def test_the_plain_path_is_kept_off_the_gpu():
    # CPU logits (and CI, which has no triton) go through PyTorch
    x = hard_logits(2, 3, 320, "cpu")
    assert not sk.usable(x)
    got = samplers.propose(x, 0.0, "prob", need_entropy=False)
    want = plain(x)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

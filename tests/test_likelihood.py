"""log p(continuation | context): exact AR, the coupled MDM ELBO and pseudo-log-likelihood,
checked against distributions whose likelihood is known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from codediff.likelihood import mdm_elbo, rank, score
from codediff.model import ModelConfig, Transformer
from codediff.objectives import ObjectiveConfig, draw_noise, mdm_loss, micro_batch_generator

MASK = 0


class Oracle(torch.nn.Module):
    """Exact denoisers for two toy distributions over symbols 1..V (id 0 is the mask).

    `repeat`: a sequence is one uniformly random symbol repeated, so p(seq) = 1/V; a masked token
    equals any visible symbol, and is uniform when nothing is visible.
    `iid`: tokens independent with probabilities `probs`; the denoiser ignores the context.
    """

    def __init__(self, V: int, kind: str, probs: torch.Tensor | None = None):
        super().__init__()
        self.V, self.kind, self.probs = V, kind, probs
        self.config = ModelConfig(vocab_size=V + 1, n_layer=1, n_head=1, d_model=2,
                                  max_seq_len=64)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, attention_mask=None, **_):
        B, S = x.shape
        logits = torch.full((B, S, self.V + 1), -1e9, dtype=torch.float64)
        if self.kind == "iid":
            logits[..., 1:] = self.probs.log()
            return logits
        for b in range(B):
            real = x[b] if attention_mask is None else x[b][attention_mask[b]]
            seen = real[real != MASK]
            if len(seen):
                logits[b, :, int(seen[0])] = 0.0
            else:
                logits[b, :, 1:] = -math.log(self.V)
        return logits


def test_coupled_elbo_is_unbiased_for_the_exact_denoiser():
    V, L = 5, 3
    torch.manual_seed(0)
    # repeated symbol, no context: log p = -log V; the ELBO of the exact denoiser is tight
    s = score(Oracle(V, "repeat"), [], [[2] * L], objective="mdm", mask_id=MASK, samples=600,
              max_len=16)[0]
    assert s.method == "elbo" and s.stderr > 0
    assert abs(s.logp - (-math.log(V))) < 4 * s.stderr
    # with a context the continuation is determined: log p = 0 exactly for every sample
    s = score(Oracle(V, "repeat"), [3, 3], [[3] * L], objective="mdm", mask_id=MASK,
              samples=64, max_len=16)[0]
    assert s.logp == pytest.approx(0.0, abs=1e-9)
    # i.i.d. tokens: the estimate matches the exact log-likelihood
    probs = torch.tensor([0.5, 0.2, 0.2, 0.05, 0.05], dtype=torch.float64)
    cont = [1, 4, 2, 5, 1, 3]
    exact = sum(math.log(probs[t - 1]) for t in cont)
    s = score(Oracle(V, "iid", probs), [1, 2], [cont], objective="mdm", mask_id=MASK,
              samples=400, max_len=16)[0]
    assert abs(s.logp - exact) < 4 * s.stderr
    # pseudo-log-likelihood of independent tokens is exact too
    p = score(Oracle(V, "iid", probs), [1, 2], [cont], objective="mdm", method="pll",
              mask_id=MASK, max_len=16)[0]
    assert p.logp == pytest.approx(exact) and p.stderr == 0.0


def _train(model: Transformer, batches, objective: str, steps: int, lr: float = 3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    cfg = ObjectiveConfig(objective, mask_id=MASK, t_sampling="stratified")
    for i in range(steps):
        x = batches(i)
        if objective == "ar":
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        else:
            noise = draw_noise(cfg, x.shape[0], x.shape[1] - 1,
                               micro_batch_generator(0, i, "cpu"), "cpu")
            loss = mdm_loss(model, x, noise, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_trained_mdm_elbo_bounds_the_known_nll_and_ar_is_exact():
    """Toy: a sequence of 6 copies of one symbol out of V=8; the true NLL of the 5 tokens after
    the first is 0 and of the whole sequence log 8. Any model's negative ELBO is at least the
    true NLL; the AR model's exact NLL is too."""
    torch.set_num_threads(1)
    V, L = 8, 6
    gen = torch.Generator().manual_seed(0)

    def batches(i):
        sym = torch.randint(1, V + 1, (32, 1), generator=gen)
        return sym.expand(32, L + 1).contiguous()

    cfg = ModelConfig(vocab_size=V + 1, n_layer=2, n_head=2, d_model=32, max_seq_len=16)
    torch.manual_seed(0)
    mdm = _train(Transformer(ModelConfig(**{**cfg.to_dict(), "causal": False})), batches,
                 "mdm", 150)
    torch.manual_seed(0)
    ar = _train(Transformer(cfg), batches, "ar", 150)
    true_nll = math.log(V)
    neg_elbos, ar_nlls = [], []
    for sym in range(1, V + 1):
        s = score(mdm, [], [[sym] * L], objective="mdm", mask_id=MASK, samples=128, seed=sym)[0]
        neg_elbos.append(-s.logp)
        # AR conditions on a first token; score the rest exactly and add log V for the first
        a = score(ar, [sym], [[sym] * (L - 1)], objective="ar")[0]
        ar_nlls.append(-a.logp + true_nll)
    mean_elbo = sum(neg_elbos) / V
    assert mean_elbo >= true_nll - 0.05  # the bound holds (up to Monte Carlo noise)
    assert mean_elbo < true_nll + 1.0  # and the model learned the structure
    assert min(ar_nlls) >= true_nll - 1e-6 and sum(ar_nlls) / V < true_nll + 0.5


def test_ar_exact_matches_a_manual_sum_and_ignores_batching():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=2, d_model=32,
                                max_seq_len=32)).double().eval()
    ctx, conts = [5, 6, 7], [[8], [9, 10, 11], [12, 13]]
    got = score(m, ctx, conts, objective="ar", batch_size=2)
    for c, s in zip(conts, got, strict=True):
        seq = torch.tensor([ctx + c])
        lp = F.log_softmax(m(seq[:, :-1]), -1)[0]
        manual = sum(lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(c))
        assert s.logp == pytest.approx(manual, abs=1e-9) and s.stderr == 0 and s.method == "exact"
    # a context longer than the window keeps its end
    long = score(m, list(range(1, 40)), [[3, 4]], objective="ar")[0]
    short = score(m, list(range(1, 40))[-31:], [[3, 4]], objective="ar")[0]
    assert long.logp == pytest.approx(short.logp)


def test_coupling_cancels_monte_carlo_noise_between_options():
    """Two options that differ in one token: the coupled difference varies far less across
    seeds than the difference of independent estimates."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=40, n_layer=2, n_head=2, d_model=32, max_seq_len=32,
                                causal=False)).double().eval()
    ctx = [3, 4, 5, 6]
    a, b = [7, 8, 9, 10, 11, 12], [7, 8, 9, 10, 11, 13]
    coupled, independent = [], []
    for seed in range(12):
        sa, sb = mdm_elbo(m, ctx, [a, b], mask_id=1, max_len=32, samples=8, seed=seed)
        coupled.append(sa.logp - sb.logp)
        ia = mdm_elbo(m, ctx, [a], mask_id=1, max_len=32, samples=8, seed=100 + seed)[0]
        ib = mdm_elbo(m, ctx, [b], mask_id=1, max_len=32, samples=8, seed=200 + seed)[0]
        independent.append(ia.logp - ib.logp)
    assert torch.tensor(coupled).std() * 5 < torch.tensor(independent).std()
    # and the reported standard error is of the size of the seed-to-seed spread
    ses = [mdm_elbo(m, ctx, [a], mask_id=1, max_len=32, samples=8, seed=s)[0] for s in range(12)]
    spread = torch.tensor([s.logp for s in ses]).std().item()
    mean_se = sum(s.stderr for s in ses) / len(ses)
    assert spread / 3 < mean_se < spread * 3
    assert rank([sa, sb]) in (0, 1)


def test_methods_refuse_the_wrong_model_kind():
    m = Transformer(ModelConfig(vocab_size=40, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(ValueError, match="needs an mdm model"):
        score(m, [1], [[2]], objective="ar", method="elbo", mask_id=0)
    with pytest.raises(ValueError, match="needs an ar model"):
        score(m, [1], [[2]], objective="mdm", method="exact")
    with pytest.raises(ValueError, match="at least one token"):
        score(m, [1], [[]], objective="ar")

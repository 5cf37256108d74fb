"""Commit rules and token proposals of codediff.sampling.rules, next-token sampling of
codediff.sampling.ar (pure tensor functions, no model)."""

from __future__ import annotations

import math

import pytest
import torch

from codediff.sampling import ar as A
from codediff.sampling import rules as S


def _gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_transfer_schedule_even_split_remainder_first():
    k = S.transfer_schedule(torch.tensor([10, 3, 0, 8]), 4)
    assert k.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0], [2, 2, 2, 2]]
    assert k.sum(dim=1).tolist() == [10, 3, 0, 8]


def test_gumbel_temperature_zero_is_argmax_and_float64_noise():
    logits = torch.randn(2, 5, 7)
    assert torch.equal(S.gumbel_perturb(logits, 0.0), logits)
    noisy = S.gumbel_perturb(logits, 1.0, _gens(2))
    assert noisy.dtype == torch.float64


def test_gumbel_max_samples_the_softmax():
    # argmax(l + g) ~ softmax(l): check empirical frequencies against the probabilities
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0])
    n = 40000
    torch.manual_seed(0)
    draws = S.gumbel_perturb(logits.expand(n, 4), 1.0)
    freq = torch.bincount(draws.argmax(-1), minlength=4).double() / n
    assert torch.allclose(freq, logits.double().softmax(-1), atol=0.01)
    # and the library function at temperature 0.5 sharpens towards softmax(l / 0.5)
    x = S.gumbel_perturb(logits.expand(n, 4).unsqueeze(0), 0.5, _gens(1)).argmax(-1)[0]
    freq = torch.bincount(x, minlength=4).double() / n
    assert torch.allclose(freq, (logits.double() / 0.5).softmax(-1), atol=0.01)


def test_per_row_generators_make_rows_independent_of_batch():
    logits = torch.randn(3, 6, 11)
    full = S.gumbel_perturb(logits, 1.0, _gens(3, seed=5))
    row1 = S.gumbel_perturb(logits[1:2], 1.0, [torch.Generator().manual_seed(6)])
    assert torch.equal(full[1:2], row1)


def test_propose_scores():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]]))
    x0, conf, ent = S.propose(logits, 0.0, "prob")
    assert x0.tolist() == [[0, 0]]
    assert torch.allclose(conf, torch.tensor([[0.7, 0.4]], dtype=torch.float64))
    h = -(torch.tensor([0.7, 0.2, 0.1]) * torch.log(torch.tensor([0.7, 0.2, 0.1]))).sum()
    assert math.isclose(ent[0, 0].item(), h.item(), rel_tol=1e-6)
    _, margin, _ = S.propose(logits, 0.0, "margin")
    assert torch.allclose(margin, torch.tensor([[0.5, 0.05]], dtype=torch.float64))
    _, neg_h, _ = S.propose(logits, 0.0, "neg_entropy")
    assert torch.allclose(neg_h, -ent)
    _, r, _ = S.propose(logits, 0.0, "random", _gens(1))
    assert ((r >= 0) & (r < 1)).all()


def test_propose_scores_equal_a_full_float64_softmax():
    # scores are read off logsumexp for the one or two entries they need; on large, peaked
    # logits with suppressed (-inf) entries they equal LLaDA's full float64 softmax
    torch.manual_seed(0)
    logits = torch.randn(3, 16, 4096) * 6
    logits[..., 7] = float("-inf")
    logits[0, :, 11] = float("-inf")
    p = torch.softmax(logits.to(torch.float64), dim=-1)
    for temperature in (0.0, 0.7):
        x0, conf, ent = S.propose(logits, temperature, "prob", _gens(3))
        torch.testing.assert_close(conf, p.gather(-1, x0[..., None])[..., 0], rtol=1e-12,
                                   atol=1e-15)
        want_h = -(p * p.log()).nan_to_num(0.0).sum(-1)
        torch.testing.assert_close(ent, want_h, rtol=1e-10, atol=1e-12)
    _, margin, _ = S.propose(logits, 0.0, "margin")
    top2 = p.topk(2, dim=-1).values
    torch.testing.assert_close(margin, top2[..., 0] - top2[..., 1], rtol=1e-10, atol=1e-15)


def test_topk_commits_exactly_k_best_candidates():
    conf = torch.tensor([[0.9, 0.1, 0.8, 0.95, 0.5]])
    cand = torch.tensor([[True, True, True, False, True]])
    sel = S.select_topk(conf, cand, torch.tensor([2]))
    assert sel.tolist() == [[True, False, True, False, False]]  # 0.95 is not a candidate
    assert S.select_topk(conf, cand, torch.tensor([9])).sum() == 4  # capped at candidates
    assert S.select_topk(conf, cand, torch.tensor([0])).sum() == 0


def test_threshold_commits_above_tau_and_at_least_one():
    conf = torch.tensor([[0.95, 0.2, 0.91, 0.3], [0.5, 0.4, 0.1, 0.2], [0.99, 0.99, 0.99, 0.99]])
    cand = torch.tensor([[True] * 4, [True] * 4, [False] * 4])
    sel = S.select_threshold(conf, cand, 0.9)
    assert sel[0].tolist() == [True, False, True, False]
    assert sel[1].tolist() == [True, False, False, False]  # only the best, below tau
    assert sel[2].sum() == 0  # nothing to commit outside the candidates
    # tau = 1 commits exactly one per step unless a prob is exactly 1
    sel1 = S.select_threshold(torch.rand(4, 16, dtype=torch.float64) * 0.999,
                              torch.ones(4, 16, dtype=torch.bool), 1.0)
    assert sel1.sum(dim=1).tolist() == [1, 1, 1, 1]


def test_factor_rule():
    # sorted conf: 0.99, 0.9, 0.7, 0.6 ; f = 1: thresholds 1-1/2=0.5, 1-1/3=.667, 1-1/4=.75, .8
    conf = torch.tensor([[0.6, 0.99, 0.7, 0.9]])
    cand = torch.ones(1, 4, dtype=torch.bool)
    sel = S.select_factor(conf, cand, 1.0)
    assert sel.tolist() == [[False, True, False, True]]  # 0.7 < 0.75 stops at n = 3
    # a tiny factor still commits the best
    assert S.select_factor(conf, cand, 1e-6).sum() == 1
    # a huge factor commits everything
    assert S.select_factor(conf, cand, 100.0).sum() == 4


def test_entropy_bounded_rule():
    conf = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    ent = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    cand = torch.ones(1, 4, dtype=torch.bool)
    # prefix sums minus max: [0, .1, .3, .6]
    assert S.select_entropy_bounded(conf, ent, cand, 0.0).tolist() == [[True, False, False, False]]
    assert S.select_entropy_bounded(conf, ent, cand, 0.15).sum() == 2
    assert S.select_entropy_bounded(conf, ent, cand, 0.35).sum() == 3
    assert S.select_entropy_bounded(conf, ent, cand, 10.0).sum() == 4
    none = torch.zeros(1, 4, dtype=torch.bool)
    assert S.select_entropy_bounded(conf, ent, none, 10.0).sum() == 0


@pytest.mark.parametrize("name", list(S.SAMPLERS))
def test_every_rule_commits_only_candidates_and_progresses(name):
    torch.manual_seed(0)
    rule = S.CommitRule(name, tau=0.5, factor=1.0, gamma=0.5)
    for _ in range(20):
        logits = torch.randn(3, 12, 9) * 3
        cand = torch.rand(3, 12) < 0.5
        cand[2] = False
        x0, conf, ent = S.propose(logits, 0.7, rule.score, _gens(3))
        k = torch.tensor([2, 5, 1])
        sel = S.select(rule, conf, ent, cand, k)
        assert not (sel & ~cand).any()
        has = cand.any(dim=1)
        assert ((sel.sum(dim=1) >= 1) == has).all()


def test_commit_rule_validation():
    with pytest.raises(ValueError):
        S.CommitRule("nope")
    with pytest.raises(ValueError):
        S.CommitRule("threshold", tau=1.5)
    assert S.CommitRule("threshold").rule == "threshold"
    assert S.CommitRule("margin").fixed_schedule


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(A.filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = torch.isfinite(A.filter_logits(logits, top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    kept = torch.isfinite(A.filter_logits(logits, top_p=0.5))[0].tolist()
    assert kept == [True, False, False, False]
    assert torch.isfinite(A.filter_logits(logits, top_p=0.01)).sum() == 1


def test_sample_next_greedy_and_seeded():
    logits = torch.randn(4, 50)
    assert torch.equal(A.sample_next(logits), logits.argmax(-1))
    a = A.sample_next(logits, 1.0, top_k=5, generators=_gens(4, 3))
    b = A.sample_next(logits, 1.0, top_k=5, generators=_gens(4, 3))
    assert torch.equal(a, b)
    top5 = logits.topk(5, dim=-1).indices
    assert (top5 == a.unsqueeze(-1)).any(-1).all()

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


# ----------------------------------------------------------------------------- Dream origin and
# the reference random stream (--reference-rng; token parity: tests/test_parity_ref.py)

def test_origin_probabilities_are_dreams_float32_ratios():
    for steps in (1, 5, 16):
        p = S.origin_probabilities(steps, 1e-3)
        assert p.dtype == torch.float32 and p.shape == (steps,) and p[-1].item() == 1.0
        t = torch.linspace(1, 1e-3, steps + 1)
        for i in range(steps - 1):  # Dream divides 0-dim float32 tensors, step by step
            assert p[i].item() == (1 - t[i + 1] / t[i]).item()


def test_select_origin_commits_candidates_below_the_probability():
    u = torch.tensor([[0.1, 0.6, 0.3, 0.9]], dtype=torch.float64)
    cand = torch.tensor([[True, True, False, True]])
    assert S.select_origin(u, cand, torch.tensor([0.5])).tolist() == [[True, False, False, False]]
    assert S.select_origin(u, cand, torch.tensor([0.0])).sum() == 0  # may commit none
    assert S.select_origin(u, cand, torch.tensor([1.0])).tolist() == cand.tolist()
    rule = S.CommitRule("origin")
    assert rule.fixed_steps and not rule.fixed_schedule and rule.score == "random"
    with pytest.raises(ValueError, match="probability"):
        S.select(rule, u, None, cand)


def test_uniform_over_sequence_is_torch_rand_over_the_row_alone():
    # row 1 sits behind 2 pads; each row reads its block from its own whole-sequence draw
    out = S.uniform_over_sequence([7, 5], [0, 2], 4, 7, _gens(2, 3), torch.device("cpu"))
    assert out.dtype == torch.float64
    for b, (n, off) in enumerate([(7, 0), (5, 2)]):
        torch.manual_seed(3 + b)  # the reference: the global generator, seeded
        assert torch.equal(out[b], torch.rand((1, n))[0, 4 - off:7 - off].double())


def test_uniform_over_masked_draws_one_number_per_mask_in_order():
    M = 1
    x = torch.tensor([[5, 6, M, 7, M, M, M],    # masks at 2 (before the block) and 4, 5, 6
                      [0, 0, 5, 6, 8, 9, 4]])   # 2 pads, no mask: draws nothing
    g = _gens(2, 7)
    out = S.uniform_over_masked(x == M, [7, 5], [0, 2], 4, 7, g)
    torch.manual_seed(7)
    want = torch.rand(4)  # Dream: torch.rand over the masked positions
    assert torch.equal(out[0], want[1:].double())
    assert out[1].tolist() == [1.0, 1.0, 1.0]
    assert torch.equal(torch.rand(3, generator=g[1]), torch.rand(3, generator=_gens(1, 8)[0]))


def test_reference_rng_needs_a_random_score_at_temperature_zero():
    from codediff.sampling.dlm import DLMSettings

    DLMSettings(rule=S.CommitRule("random"), reference_rng=True)
    DLMSettings(rule=S.CommitRule("origin"), reference_rng=True, gen_length=32, block_length=32)
    with pytest.raises(ValueError, match="temperature 0"):
        DLMSettings(rule=S.CommitRule("low_confidence"), reference_rng=True)
    with pytest.raises(ValueError, match="temperature 0"):
        DLMSettings(rule=S.CommitRule("random"), reference_rng=True, temperature=0.5)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        DLMSettings(rule=S.CommitRule("origin"), gen_length=16, block_length=4, steps=6)


class _TableModel:
    """A stand-in DLM: logits at a position depend on its token and its real position only, so
    a left-padded row computes what it computes alone."""

    name, device, eos_ids, pad_id, mask_id = "table", torch.device("cpu"), [], 0, 1
    flops, slices_head, dlm_cache, graphable = None, False, False, False

    class tokenizer:  # noqa: N801 - the attribute the Protocol names
        @staticmethod
        def decode(ids: list[int]) -> str:
            return " ".join(map(str, ids))

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.tok = torch.randn(20, 20, generator=g)
        self.pos = torch.randn(64, 20, generator=g)

    def forward(self, idx: torch.Tensor, *, attention_mask=None, position_ids=None,
                logits_range=None, **_) -> torch.Tensor:
        pos = position_ids if position_ids is not None else torch.arange(idx.shape[1])
        out = self.tok[idx] + self.pos[pos.expand_as(idx)]
        return out[:, logits_range[0]:logits_range[1]] if logits_range else out


@pytest.mark.parametrize("reference_rng", [False, True])
def test_origin_rows_in_a_batch_equal_rows_alone(reference_rng):
    """Blocks of 2 over 4 steps: rows often fill a block before its last step, and the step loop
    then runs on for the others. A row's draws must not depend on that."""
    from codediff.sampling.dlm import DLMSettings, generate_dlm

    model = _TableModel()
    prompts = [[5, 6, 7, 8, 9], [4, 3], [11, 12, 13]]
    seeds = [21, 22, 23]
    s = DLMSettings(gen_length=16, block_length=2, steps=32, rule=S.CommitRule("origin"),
                    early_stop=False, reference_rng=reference_rng)
    batched = generate_dlm(model, prompts, s, (), [torch.Generator().manual_seed(x)
                                                     for x in seeds])
    early = 0
    for p, seed, b in zip(prompts, seeds, batched, strict=True):
        alone = generate_dlm(model, [p], s, (), [torch.Generator().manual_seed(seed)])[0]
        assert alone.ids == b.ids and alone.nfe == b.nfe
        assert 1 not in b.ids and len(b.ids) == 16
        early += 32 - alone.nfe  # steps skipped because the block was already full
    assert early > 0


def test_reference_rng_refusals_are_one_line(tmp_path, capsys):
    from codediff.cli import main

    base = ["generate", "--model", str(tmp_path / "m"), "--task", "humaneval", "--out",
            str(tmp_path / "s.jsonl"), "--no-progress", "--gen-length", "16", "--block-length",
            "16"]
    for extra, says in ((["--sampler", "low_confidence"], "applies to --sampler random / origin"),
                        (["--sampler", "origin", "--temperature", "0.5"], "--temperature 0"),
                        (["--sampler", "random", "-n", "2"], "-n 1"),
                        (["--sampler", "origin", "--step-schedule", "dream"], "origin")):
        flag = ["--reference-rng"] if "--step-schedule" not in extra else []
        assert main([*base, *extra, *flag]) == 2
        err = capsys.readouterr().err
        assert err.startswith("codediff: error:") and err.count("\n") == 1 and says in err, err
    assert not list(tmp_path.glob("s.*"))

"""Infilling in `codediff generate` (issue 15): the token sequences the prompt modes build, every
DLM sampler and cache mode with a fixed suffix, the answer-length rules, the `ar` FIM refusal,
and infill runs going end to end through generate -> evaluate -> report.

Models are tiny and random (float64); the tokenizers are small BPEs trained here on standard-
library source. Problems come from the HumanEval infilling data in the shared data folder.
"""

from __future__ import annotations

import gzip
import inspect
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from codediff.backends import native_backend
from codediff.infill import BUDGETS, FIM_TOKENS, ORACLE_LABEL, end_of_line, fit, reference_fill
from codediff.sampling import CACHES, SAMPLERS
from codediff.sampling.dlm import DLMSettings, generate_dlm
from codediff.sampling.rules import CommitRule
from tests.test_generate import (  # noqa: F401 - tok is a fixture
    CPU,
    EOT,
    MASK,
    PAD,
    backend_for,
    cli,
    make_model,
    read_jsonl,
    recording,
    save_native,
    tok,
)

DATA = "humaneval-infilling"
FILES = {"single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
         "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
         "span": "HumanEval-RandomSpanInfilling.jsonl.gz"}
PRE, SUF = "def f(x):\n", "    return y\n"


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def bpe(request):
    """test_generate's tokenizer (its `tok` fixture)."""
    return request.getfixturevalue("tok")


def bpe_with(sentinels: tuple[str, str, str]):
    """A BPE with these three specials after the usual ones (ids 3, 4, 5)."""
    import textwrap as tw

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|mask|>", "<|pad|>",
                                                  *sentinels],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator([inspect.getsource(m) for m in (tw, json.encoder, inspect)], trainer)
    assert [t.token_to_id(x) for x in sentinels] == [3, 4, 5]
    return t


@pytest.fixture(scope="module")
def fim_tok():
    """A BPE with the FIM sentinels after the usual specials (ids 3, 4, 5, as `codediff corpus`
    reserves them)."""
    return bpe_with(FIM_TOKENS)


def rows_of(hole: str, n: int, with_suffix: bool = True) -> list[dict]:
    path = Path(os.environ["CODEDIFF_DATA"]) / DATA / FILES[hole]
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["suffix"] or not with_suffix:
                out.append(r)
            if len(out) == n:
                break
    return out


def toy_infill_task(hole: str = "single-line", n: int = 3):
    """An infilling task over the first `n` HumanEval infilling rows, in the contract's shape
    (the real specs live in tasks/; this one needs no data loader)."""
    from codediff.harness.tasks import DatasetId, Problem, PromptFormat, Task, get_spec

    program = "prompt+completion+suffix"
    formats = {"infill": PromptFormat("infill", "{prompt}", program, (), suffix="{suffix}")}
    if hole == "single-line":
        formats["prefix"] = PromptFormat("prefix", "{prompt}", program, ("\n",))
    spec = replace(get_spec("humaneval"), name=f"toy-infill-{hole}", hole=hole,
                   formats=formats, default_format="infill")
    problems = [Problem(task_id=r["task_id"], prompt=r["prompt"], entry_point=r["entry_point"],
                        reference=r["prompt"] + r["canonical_solution"] + r["suffix"],
                        test=r["test"], suffix=r["suffix"]) for r in rows_of(hole, n)]
    return Task(spec, problems, DatasetId(spec.name, "1", "0" * 64, FILES[hole]))


@pytest.fixture
def toy_task(monkeypatch):
    """Serve toy infilling tasks to `codediff generate` by name."""
    from codediff.harness import tasks

    real = tasks.load_task

    def load(name, data=None, **kw):
        for hole in FILES:
            if name == f"toy-infill-{hole}":
                return toy_infill_task(hole)
        return real(name, data, **kw)

    monkeypatch.setattr(tasks, "load_task", load)
    return toy_infill_task


def save_fim_ar(bpe, tmp_path: Path, fim_rate: float) -> Path:
    """A tiny native `ar` checkpoint whose record says it was trained with this FIM rate."""
    from codediff.checkpoints import save_checkpoint
    from codediff.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=bpe.get_vocab_size(), n_layer=2, n_head=4,
                                    d_model=64, max_seq_len=512, causal=True))
    d = tmp_path / f"fim-{fim_rate}" / "checkpoints" / "tokens-1000"
    save_checkpoint(model, bpe, d, {"objective": "ar", "mask_id": MASK, "eot_id": EOT,
                                    "pad_id": PAD, "tokens": 1000, "epochs": 1.0,
                                    "fim_rate": fim_rate})
    return d.parent.parent


def ids(bpe, text: str) -> list[int]:
    return bpe.encode(text, add_special_tokens=False).ids


def shown(bpe, seq) -> str:
    """A token sequence as text with its special tokens spelled out."""
    return bpe.decode([int(t) for t in seq], skip_special_tokens=False)


# ----------------------------------------------------------------------------- golden sequences

def test_golden_mdm_infill_sequence(bpe):
    b = recording(backend_for(bpe, "mdm"))
    b.eos_ids = []
    s = DLMSettings(gen_length=8, block_length=8, steps=8, early_stop=False)
    generate_dlm(b, [ids(bpe, PRE)], s, suffixes=[ids(bpe, SUF)])
    first = b.seen[0][0].tolist()
    assert first == ids(bpe, PRE) + [MASK] * 8 + ids(bpe, SUF)
    assert shown(bpe, first) == PRE + "<|mask|>" * 8 + SUF
    # a batch: prompts left-padded, suffixes right-padded, the masks in one column range
    b.seen.clear()
    long_pre, short_suf = "import os\n\n" + PRE, "    pass\n"
    generate_dlm(b, [ids(bpe, PRE), ids(bpe, long_pre)], s,
                 suffixes=[ids(bpe, SUF), ids(bpe, short_suf)])
    x = b.seen[0].tolist()
    P = len(ids(bpe, long_pre))
    pad_l = P - len(ids(bpe, PRE))
    pad_r = len(ids(bpe, SUF)) - len(ids(bpe, short_suf))
    assert x[0] == [PAD] * pad_l + ids(bpe, PRE) + [MASK] * 8 + ids(bpe, SUF)
    assert x[1] == ids(bpe, long_pre) + [MASK] * 8 + ids(bpe, short_suf) + [PAD] * pad_r


def job(prompt: str, suffix: str, fill: int = 0):
    from codediff.generate import Job

    return Job(0, 0, "T/0", 0, prompt, suffix, fill)


def plan(prompt: str, hole: str = "single-line", length_rule: str = "budget"):
    from codediff.infill import InfillPlan, end_rule

    return InfillPlan(prompt=prompt, hole=hole, length_rule=length_rule,
                      budget=None if length_rule == "oracle" else BUDGETS[hole],
                      end_rule=end_rule(hole))


def test_golden_prompts_of_each_mode(bpe, fim_tok):
    from codediff.generate import _ar_infill_sentinels, _encode_infill

    mdm = backend_for(bpe, "mdm")
    # prefix: the text before the hole only, for both objectives
    for b in (mdm, backend_for(bpe, "ar")):
        mode = "dlm" if b is mdm else "ar"
        enc, prompts, suffixes, cut = _encode_infill(b.tokenizer, [job(PRE, SUF)], plan("prefix"),
                                                     mode, None, b)
        assert prompts == [ids(bpe, PRE)] and suffixes is None and cut == [None]
    # infill, mdm: the prompt, then (in generate_dlm) the masks, then the suffix
    _, prompts, suffixes, _ = _encode_infill(mdm.tokenizer, [job(PRE, SUF)], plan("infill"), "dlm",
                                             None, mdm)
    assert prompts == [ids(bpe, PRE)] and suffixes == [ids(bpe, SUF)]
    # infill, ar with FIM: the PSM prompt with the sentinels; the answer ends at end-of-text
    ar = native_backend(make_model(fim_tok.get_vocab_size(), True), fim_tok,
                        {"objective": "ar", "eot_id": EOT, "pad_id": PAD, "fim_rate": 0.5},
                        device=CPU, dtype=torch.float64)
    sentinels = _ar_infill_sentinels(ar)
    assert sentinels == (3, 4, 5)
    _, prompts, suffixes, _ = _encode_infill(ar.tokenizer, [job(PRE, SUF)], plan("infill"), "ar",
                                             sentinels, ar)
    assert suffixes is None
    assert prompts == [[3, *ids(fim_tok, PRE), 4, *ids(fim_tok, SUF), 5]]
    assert shown(fim_tok, prompts[0]) == f"<|fim_prefix|>{PRE}<|fim_suffix|>{SUF}<|fim_middle|>"


def test_long_prompts_are_cut_on_both_sides():
    pre, suf = list(range(10)), list(range(100, 110))
    assert fit(pre, suf, 30) == (pre, suf, False)
    p, q, cut = fit(pre, suf, 8)
    assert cut and p == pre[-4:] and q == suf[:4]  # the oldest prefix, the farthest suffix
    p, q, _ = fit(pre, [100], 8)
    assert p == pre[-7:] and q == [100]


def test_end_rule_and_reference_fill():
    assert end_of_line("    return x\n    y = 2\n") == "    return x\n"
    assert end_of_line("    return x") == "    return x\n"
    task = toy_infill_task("single-line", 2)
    for p, r in zip(task.problems, rows_of("single-line", 2), strict=True):
        assert reference_fill(p) == r["canonical_solution"]


# ----------------------------------------------------------------------------- samplers and caches

INFILL = [("def add(a, b):\n", "    return c\n\nprint(add(1, 2))\n"),
          ("import os\n", ""),  # nothing after the hole: an ordinary prompt in the same batch
          ("class Point:\n    def __init__(self", "        self.y = y\n")]


def infill_batch(bpe):
    return [ids(bpe, p) for p, _ in INFILL], [ids(bpe, s) for _, s in INFILL]


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_and_cache_fills_the_hole_and_keeps_the_suffix(bpe, name, cache):
    b = recording(backend_for(bpe, "mdm"))
    b.eos_ids = []
    G, BL = 16, 8
    prompts, suffixes = infill_batch(bpe)
    rule = CommitRule(name, tau=0.3, factor=2.0, gamma=1.0)
    s = DLMSettings(gen_length=G, block_length=BL, steps=8, rule=rule, temperature=0.5,
                    cache=cache, early_stop=False)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    out = generate_dlm(b, prompts, s, generators=gens, suffixes=suffixes)
    W = max(len(x) for x in suffixes)
    want = torch.tensor([x + [PAD] * (W - len(x)) for x in suffixes])
    windows = 0
    for x in b.seen:
        if x.shape[1] > BL:  # a full sequence or a prefix-cache window: both end with it
            assert torch.equal(x[:, -W:], want)
            windows += 1
    assert windows >= 2  # the block starts at least
    for o in out:
        assert len(o.ids) == G and MASK not in o.ids and o.nfe >= 2 and o.flops > 0


@pytest.mark.parametrize("name", ["low_confidence", "threshold"])
def test_infill_caches_are_exact_for_a_causal_model(bpe, name):
    b = backend_for(bpe, "mdm", causal=True)
    b.eos_ids = []
    prompts, suffixes = infill_batch(bpe)
    outs = {}
    for cache in CACHES:
        s = DLMSettings(gen_length=24, block_length=8, steps=24, rule=CommitRule(name, tau=0.5),
                        cache=cache, early_stop=False)
        outs[cache] = generate_dlm(b, prompts, s, suffixes=suffixes)
    got = {c: [o.ids for o in v] for c, v in outs.items()}
    assert got["none"] == got["prefix"] == got["dual"]
    for n, p, d in zip(outs["none"], outs["prefix"], outs["dual"], strict=True):
        assert n.nfe == p.nfe == d.nfe and d.flops < p.flops < n.flops


def test_infill_caches_are_exact_with_one_step_per_block(bpe):
    # bidirectional: the masks see the suffix; each block is decided by its start's full forward
    b = backend_for(bpe, "mdm")
    b.eos_ids = []
    prompts, suffixes = infill_batch(bpe)
    res = []
    for cache in CACHES:
        s = DLMSettings(gen_length=24, block_length=8, steps=3, cache=cache, early_stop=False)
        res.append([o.ids for o in generate_dlm(b, prompts, s, suffixes=suffixes)])
    assert res[0] == res[1] == res[2]
    # and the suffix matters: the same prompts without it give other answers
    s = DLMSettings(gen_length=24, block_length=8, steps=3, early_stop=False)
    assert [o.ids for o in generate_dlm(b, prompts, s)] != res[0]


@pytest.mark.parametrize("cache", CACHES)
def test_infill_batched_equals_unbatched(bpe, cache):
    b = backend_for(bpe, "mdm")
    s = DLMSettings(gen_length=16, block_length=8, steps=8, rule=CommitRule("threshold", tau=0.6),
                    temperature=0.7, cache=cache)
    prompts, suffixes = infill_batch(bpe)
    gens = [torch.Generator().manual_seed(11 + i) for i in range(3)]
    batched = generate_dlm(b, prompts, s, generators=gens, suffixes=suffixes)
    for i, (p, q) in enumerate(zip(prompts, suffixes, strict=True)):
        alone = generate_dlm(b, [p], s, generators=[torch.Generator().manual_seed(11 + i)],
                             suffixes=[q])
        assert alone[0].ids == batched[i].ids and alone[0].nfe == batched[i].nfe


class ReplayGraph:
    """A CPU stand-in for a CUDA graph: each replay copies the inputs into its own and calls the
    captured step again, into one output tensor of its own (as tests/test_generate.py does)."""

    def __init__(self, fn, inputs, out):
        self.fn, self.inputs, self.out = fn, tuple(t.clone() for t in inputs), out.clone()

    @classmethod
    def warm_and_capture(cls, fn, inputs):
        out = fn(*inputs)
        return out, cls(fn, inputs, out)

    def __call__(self, *inputs):
        for dst, src in zip(self.inputs, inputs, strict=True):
            dst.copy_(src)
        self.out.copy_(self.fn(*self.inputs))
        return self.out


def graph_case(bpe, cache: str, sampler: str, device: str):
    b = backend_for(bpe, "mdm")
    if device == "cuda":
        from tests.test_generate import cuda_backend

        b = cuda_backend(bpe)
    rule = CommitRule(sampler, tau=0.5)
    kw = dict(gen_length=24, block_length=8, cache=cache, rule=rule, steps=12)
    prompts, suffixes = infill_batch(bpe)

    def run(graphed: bool):
        return generate_dlm(b, prompts, DLMSettings(**kw, cuda_graphs=graphed), heal=True,
                            suffixes=suffixes)
    return run


@pytest.mark.parametrize("sampler", ["threshold", "low_confidence"])
@pytest.mark.parametrize("cache", CACHES)
def test_graph_path_on_infill_prompts_gives_the_eager_samples(bpe, monkeypatch, cache, sampler):
    from codediff.sampling import graphs

    run = graph_case(bpe, cache, sampler, "cpu")
    want = run(False)
    monkeypatch.setattr(graphs, "can_graph", lambda x, backend: True)
    monkeypatch.setattr(graphs, "BlockGraph", ReplayGraph)
    got = run(True)
    assert [o.ids for o in got] == [o.ids for o in want]
    assert [(o.nfe, o.flops) for o in got] == [(o.nfe, o.flops) for o in want]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)")
@pytest.mark.parametrize("sampler", ["threshold", "low_confidence"])
@pytest.mark.parametrize("cache", CACHES)
def test_real_cuda_graphs_on_infill_prompts_give_the_eager_samples(bpe, cache, sampler):
    run = graph_case(bpe, cache, sampler, "cuda")
    want = run(False)
    got = run(True)
    assert [o.ids for o in got] == [o.ids for o in want]
    assert [o.nfe for o in got] == [o.nfe for o in want]


@pytest.mark.parametrize("convention", ["llada", "dream"])
def test_hf_dlm_backends_fill_between_prompt_and_suffix(bpe, tmp_path, convention):
    # a tiny causal transformers model read as a DLM: its masks cannot see the suffix, so the
    # answers equal those without one, which checks the suffix's pads and positions end to end
    from codediff.backends import load_backend
    from tests.test_generate import save_tiny_hf

    d = save_tiny_hf("Llama", bpe, tmp_path / "llama")
    b = load_backend(d, dtype="float64", kind="dlm", convention=convention, mask_id=MASK)
    prompts, suffixes = infill_batch(bpe)
    s = DLMSettings(gen_length=8, block_length=4, steps=8, early_stop=False)
    for p, q in zip(prompts, suffixes, strict=True):
        assert generate_dlm(b, [p], s, suffixes=[q])[0].ids == generate_dlm(b, [p], s)[0].ids
    if convention == "llada":
        # a padded batch too (Dream's pairwise mask would make this causal stand-in attend both
        # ways, which a real Dream model does anyway)
        with_suffix = generate_dlm(b, prompts, s, suffixes=suffixes)
        assert [o.ids for o in with_suffix] == [o.ids for o in generate_dlm(b, prompts, s)]


# ----------------------------------------------------------------------------- the command

def meta_of(out: Path) -> dict:
    return json.loads(out.with_suffix(".meta.json").read_text())


def test_mdm_infill_with_the_hole_kinds_budget(bpe, tmp_path, toy_task):
    run = save_native(bpe, tmp_path, "mdm")
    out = tmp_path / "infill.jsonl"
    assert cli("--model", run, "--task", "toy-infill-single-line", "--prompt-format", "infill",
               "-n", "2", "--sampler", "threshold", "--tau", "0.5", "--cache", "dual",
               "--out", out) == 0
    meta = meta_of(out)
    st = meta["settings"]
    assert st["infill"] == {"prompt": "infill", "hole": "single-line", "length_rule": "budget",
                            "budget": BUDGETS["single-line"], "end_rule": "line"}
    assert st["gen_length"] == BUDGETS["single-line"] and "\n" in meta["stop_sequences"]
    rows = read_jsonl(out)
    assert len(rows) == 6
    for r in rows:
        # the answer is one line, newline included: prompt + answer + suffix is a program
        assert r["completion"].endswith("\n") and r["completion"].count("\n") == 1
        assert r["answer_budget"] == 32 and r["suffix_tokens"] > 0 and r["flops"] > 0
    # the same run again is complete; another length rule is another run
    assert cli("--model", run, "--task", "toy-infill-single-line", "--prompt-format", "infill",
               "-n", "2", "--sampler", "threshold", "--tau", "0.5", "--cache", "dual",
               "--out", out) == 0
    assert cli("--model", run, "--task", "toy-infill-single-line", "--prompt-format", "infill",
               "-n", "2", "--sampler", "threshold", "--tau", "0.5", "--cache", "dual",
               "--infill-length", "oracle", "--out", out) == 2


def test_mdm_oracle_length_is_the_reference_fills_and_named(bpe, tmp_path, toy_task):
    run = save_native(bpe, tmp_path, "mdm")
    out = tmp_path / "oracle.jsonl"
    assert cli("--model", run, "--task", "toy-infill-multi-line", "--infill-length", "oracle",
               "--batch-size", "4", "-n", "2", "--out", out) == 0
    st = meta_of(out)["settings"]
    assert st["infill"]["length_rule"] == "oracle" and st["infill"]["budget"] is None
    fills = {p.task_id: len(ids(bpe, reference_fill(p)))
             for p in toy_infill_task("multi-line").problems}
    assert len(set(fills.values())) > 1  # batches split where the length changes
    for r in read_jsonl(out):
        assert r["answer_budget"] == fills[r["task_id"]]
        assert r["tokens"] <= fills[r["task_id"]]


def test_label_of_an_oracle_result_says_ablation():
    from codediff.reports.load import _ablation_marked

    oracle = {"generation": {"schema": "codediff.samples/2",
                             "settings": {"infill": {"length_rule": "oracle"}}}}
    budget = {"generation": {"schema": "codediff.samples/2",
                             "settings": {"infill": {"length_rule": "budget"}}}}
    assert _ablation_marked("mdm@tokens-1 (mdm)", oracle) == \
        f"mdm@tokens-1 (mdm) [{ORACLE_LABEL}]"
    assert _ablation_marked("given", oracle).endswith(f"[{ORACLE_LABEL}]")  # a given label too
    assert _ablation_marked("x", budget) == "x" and _ablation_marked("x", {}) == "x"


def test_prefix_mode_for_both_objectives(bpe, tmp_path, toy_task):
    for objective, extra in (("ar", []), ("mdm", ["--gen-length", "16", "--block-length", "8"])):
        run = save_native(bpe, tmp_path, objective)
        out = tmp_path / f"prefix-{objective}.jsonl"
        assert cli("--model", run, "--task", "toy-infill-single-line", "--prompt-format",
                   "prefix", "--out", out, *extra) == 0
        st = meta_of(out)["settings"]
        assert st["infill"]["prompt"] == "prefix" and st["infill"]["end_rule"] == "line"
        budget = 16 if objective == "mdm" else BUDGETS["single-line"]  # the option given wins
        assert st["infill"]["budget"] == budget
        assert st["max_new_tokens" if objective == "ar" else "gen_length"] == budget
        for r in read_jsonl(out):
            assert "suffix_tokens" not in r and r["completion"].endswith("\n")


def test_ar_infill_needs_a_fim_trained_model(bpe, fim_tok, tmp_path, toy_task, capsys):
    plain = save_native(bpe, tmp_path, "ar")
    out = tmp_path / "ar.jsonl"
    assert cli("--model", plain, "--task", "toy-infill-single-line", "--prompt-format",
               "infill", "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--fim-rate" in err and "--prompt-format prefix" in err
    assert cli("--model", save_fim_ar(fim_tok, tmp_path, 0.0), "--task",
               "toy-infill-single-line", "--prompt-format", "infill", "--out", out) == 2
    assert "--fim-rate" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))
    # oracle lengths are a diffusion ablation; length rules belong to infilling tasks
    assert cli("--model", plain, "--task", "toy-infill-single-line", "--infill-length",
               "oracle", "--out", out) == 2
    mdm = save_native(bpe, tmp_path, "mdm")
    assert cli("--model", mdm, "--task", "humaneval", "--limit", "1", "--infill-length",
               "budget", "--out", out) == 2
    assert "infilling tasks only" in capsys.readouterr().err
    # trained with FIM: the PSM prompt, the answer up to end-of-text (and here, the line)
    fim = save_fim_ar(fim_tok, tmp_path, 0.5)
    assert cli("--model", fim, "--task", "toy-infill-single-line", "--prompt-format", "infill",
               "-n", "2", "--temperature", "0.8", "--out", out) == 0
    st = meta_of(out)["settings"]
    assert st["mode"] == "ar" and st["infill"]["prompt"] == "infill"
    for r in read_jsonl(out):
        assert r["completion"].endswith("\n") and r["suffix_tokens"] > 0


def test_ar_infill_refusal_names_the_tokenizer_and_a_fix_that_works(bpe, tmp_path, toy_task,
                                                                     capsys):
    """A model whose tokenizer lacks the sentinels cannot be fixed by "train it with --fim-rate"
    (training refuses such a corpus), and a corpus built with `--tokenizer` is not fixed by
    rebuilding it: the refusal names the tokenizer and, where the run dir says how the corpus
    got its tokenizer, the fix that applies."""
    plain = save_native(bpe, tmp_path, "ar")
    out = tmp_path / "ar.jsonl"
    corpus = tmp_path / "corpus"
    corpus.mkdir()

    def refusal(manifest: dict | None) -> str:
        run_json = plain / "run.json"
        run_json.unlink(missing_ok=True)
        if manifest is not None:  # the run dir names its corpus, whose manifest says more
            (corpus / "manifest.json").write_text(json.dumps(manifest))
            run_json.write_text(json.dumps({"corpus": {"path": str(corpus)}}))
        assert cli("--model", plain, "--task", "toy-infill-single-line", "--prompt-format",
                   "infill", "--out", out) == 2
        err = capsys.readouterr().err
        assert err.startswith("codediff: error:") and err.count("\n") == 1
        assert not out.exists() and not list(tmp_path.glob("ar.jsonl*"))
        assert "tokenizer has no fill-in-the-middle sentinels" in err
        assert "<|fim_prefix|>" in err and "<fim_prefix>" in err  # both spellings count
        assert "--prompt-format prefix" in err and "train it with --fim-rate" not in err
        return err

    err = refusal({"tokenizer": {"loaded_from": "gpt2-tokenizer.json", "fim": None}})
    assert "--tokenizer gpt2-tokenizer.json" in err and "does not help" in err
    assert "codediff's own BPE" in err and "rebuild the corpus with this" not in err
    err = refusal({"tokenizer": {"trained": {"kind": "byte-level BPE"}, "fim": None}})
    assert "rebuild the corpus with this codediff version" in err
    err = refusal(None)  # a checkpoint away from its run dir: either way out is named
    assert "codediff's own BPE" in err and "a --tokenizer that has them" in err


def test_ar_infill_reads_starcoder_spelled_sentinels(tmp_path, toy_task, monkeypatch):
    """A corpus from a `--tokenizer` spelling the sentinels as StarCoder does trains with
    --fim-rate (codediff.fim accepts both spellings); generation reads them too."""
    from codediff import generate

    star = bpe_with(("<fim_prefix>", "<fim_suffix>", "<fim_middle>"))
    model = save_fim_ar(star, tmp_path, 0.5)
    seen = []
    real = generate._run_batch

    def record(cfg, backend, batch, prompts, *a, **k):
        seen.extend(prompts)
        return real(cfg, backend, batch, prompts, *a, **k)

    monkeypatch.setattr(generate, "_run_batch", record)
    out = tmp_path / "star.jsonl"
    assert cli("--model", model, "--task", "toy-infill-single-line", "--prompt-format",
               "infill", "--out", out) == 0
    assert seen and all(p[0] == 3 and p[-1] == 5 and p.count(4) == 1 for p in seen)
    assert shown(star, seen[0]).startswith("<fim_prefix>")


# ----------------------------------------------------------------------------- end to end

def infill_tasks_available() -> bool:
    from codediff.harness.tasks import available_tasks

    return "humaneval-infill-single" in available_tasks()


def fim_training_available() -> bool:
    from dataclasses import fields

    from codediff.config import TrainConfig

    return any(f.name == "fim_rate" for f in fields(TrainConfig))


def evaluate_and_report(samples: Path, task: str, tmp_path: Path, label: str) -> str:
    from codediff.cli import main

    res = tmp_path / f"results-{label}"
    assert main(["evaluate", "--task", task, "--samples", str(samples), "--out", str(res),
                 "--no-progress"]) == 0
    results = json.loads((res / "results.json").read_text())
    assert results["samples"]["count"] == len(read_jsonl(samples))
    html = tmp_path / f"{label}.html"
    assert main(["report", "--results", str(res), "--out", str(html)]) == 0
    return html.read_text()


@pytest.mark.skipif(not infill_tasks_available(),
                    reason="the infill task specs come with the infill-tasks branch")
def test_mdm_infill_end_to_end(bpe, tmp_path):
    run = save_native(bpe, tmp_path, "mdm")
    out = tmp_path / "mdm.jsonl"
    assert cli("--model", run, "--task", "humaneval-infill-single", "--prompt-format", "infill",
               "--limit", "3", "--cache", "prefix", "--out", out) == 0
    html = evaluate_and_report(out, "humaneval-infill-single", tmp_path, "mdm")
    assert ORACLE_LABEL not in html
    oracle = tmp_path / "oracle.jsonl"
    assert cli("--model", run, "--task", "humaneval-infill-single", "--prompt-format", "infill",
               "--limit", "3", "--infill-length", "oracle", "--out", oracle) == 0
    assert ORACLE_LABEL in evaluate_and_report(oracle, "humaneval-infill-single", tmp_path,
                                               "oracle")


@pytest.mark.skipif(not (infill_tasks_available() and fim_training_available()),
                    reason="needs the infill-tasks and fim branches")
def test_fim_trained_ar_infill_end_to_end(tmp_path, monkeypatch):
    from codediff.train import Dist, Trainer
    from tests import conftest_train
    from tests.test_train import micro_model, micro_train

    # a corpus whose tokenizer reserves the FIM sentinels (ids 3, 4, 5)
    monkeypatch.setattr(conftest_train, "SPECIALS", [*conftest_train.SPECIALS, *FIM_TOKENS])
    corpus = conftest_train.make_corpus(tmp_path / "corpus", max_bytes=200_000)
    run = tmp_path / "ar-fim"
    # a context with room for a prompt beside the single-line budget
    model = replace(micro_model(), max_seq_len=128)
    cfg = micro_train("ar", total_tokens=8 * 128 * 10, fim_rate=0.5)
    assert Trainer(corpus, run, model, cfg, Dist()).fit()["done"]
    out = tmp_path / "ar.jsonl"
    assert cli("--model", run, "--task", "humaneval-infill-single", "--prompt-format", "infill",
               "--limit", "3", "--out", out) == 0
    assert meta_of(out)["settings"]["infill"]["prompt"] == "infill"
    evaluate_and_report(out, "humaneval-infill-single", tmp_path, "ar-fim")

"""Fill-in-the-middle training for `ar` (codediff.fim): the sentinels `codediff corpus` reserves,
the transform (round trip, determinism, rates, one scatter equal to a per-document reference),
a short FIM run resumed equal to an uninterrupted one, what run.json and checkpoints record,
and the refusals."""

from __future__ import annotations

import json
import sysconfig
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from codediff.errors import UserError
from codediff.fim import (
    FIM_TOKENS,
    FimIds,
    FimTransform,
    document_draws,
    fim_document,
    fim_token_ids,
    fim_windows,
    split_fim,
)

IDS = FimIds(3, 4, 5)
EOT = 0
STDLIB = Path(sysconfig.get_paths()["stdlib"])


# ----------------------------------------------------------------------------- one document

def test_every_cut_of_a_document_round_trips_in_both_orders():
    doc = list(range(10, 17))
    for a in range(len(doc) + 1):
        for c in range(a, len(doc) + 1):
            psm = fim_document(doc, a, c, IDS)
            assert psm == [3, *doc[:a], 5, *doc[c:], 4, *doc[a:c]]
            assert split_fim(psm, IDS) == (doc[:a], doc[a:c], doc[c:])
            spm = fim_document(doc, a, c, IDS, spm=True)
            assert spm == [3, 5, *doc[c:], 4, *doc[:a], *doc[a:c]]
            pre, mid, suf = split_fim(spm, IDS)
            assert pre + mid + suf == doc and suf == doc[c:]
    with pytest.raises(ValueError):
        fim_document(doc, 5, 2, IDS)


# ----------------------------------------------------------------------------- windows

def reference_window(window: list[int], seq_index: int, t: FimTransform) -> tuple[list[int],
                                                                                   int]:
    """The transform of one window, document by document in plain Python (the definition in
    codediff.fim's docstring), and how many documents it rearranged (each checked to round
    trip)."""
    docs, cur = [], []
    for tok in window:
        if tok == t.eot_id:
            docs.append((cur, True))
            cur = []
        else:
            cur.append(tok)
    if cur:
        docs.append((cur, False))
    out, done = [], 0
    for k, (doc, closed) in enumerate(docs):
        u = document_draws(t.seed, np.array([seq_index]), np.array([k]))[0]
        n = len(doc)
        seg = doc
        if u[0] < t.rate and n > 0:
            cuts = sorted(min(int(v * (n + 1)), n) for v in u[2:4])
            seg = fim_document(doc, cuts[0], cuts[1], t.ids, spm=bool(u[1] < t.spm_rate))
            pre, mid, suf = split_fim(seg, t.ids)
            assert pre + mid + suf == doc  # the FIM example holds the whole document
            done += 1
        out += seg + ([t.eot_id] if closed else [])
    return out[:len(window)], done


def random_windows(rng, batch: int, width: int, eot_rate: float) -> np.ndarray:
    x = rng.integers(6, 60, (batch, width))
    x[rng.random((batch, width)) < eot_rate] = EOT
    return x


def test_windows_equal_the_per_document_definition():
    rng = np.random.default_rng(0)
    t = FimTransform(rate=0.5, spm_rate=0.3, ids=IDS, eot_id=EOT, seed=7)
    rearranged = 0
    for _ in range(200):
        B, W = int(rng.integers(1, 6)), int(rng.integers(1, 48))
        x = random_windows(rng, B, W, float(rng.random()) * 0.3)
        g = rng.integers(0, 10**9, B)
        y = fim_windows(x, g, t)
        assert y.shape == x.shape and y.dtype == x.dtype
        for b in range(B):
            want, done = reference_window(x[b].tolist(), int(g[b]), t)
            assert y[b].tolist() == want
            rearranged += done
    assert rearranged > 100


def test_transform_is_a_pure_function_of_seed_and_sequence_index():
    rng = np.random.default_rng(1)
    x = random_windows(rng, 16, 65, 0.02)
    t = FimTransform(rate=0.5, spm_rate=0.0, ids=IDS, eot_id=EOT, seed=3)
    g = np.arange(100, 116)
    y = fim_windows(x, g, t)
    assert np.array_equal(y, fim_windows(x.copy(), g, t))
    # each window alone (another micro-batch split, another rank) gives the same rows
    assert all(np.array_equal(fim_windows(x[i:i + 1], g[i:i + 1], t)[0], y[i]) for i in range(16))
    assert not np.array_equal(y, fim_windows(x, g + 16, t))  # a later epoch draws anew
    assert not np.array_equal(y, fim_windows(x, g, replace(t, seed=4)))
    assert np.array_equal(fim_windows(x, g, replace(t, rate=0.0)), x)


def test_rates_and_what_a_transformed_window_holds():
    rng = np.random.default_rng(2)
    x = random_windows(rng, 4000, 33, 0.0)  # one document per window
    g = np.arange(4000)
    y = fim_windows(x, g, FimTransform(rate=0.5, spm_rate=0.25, ids=IDS, eot_id=EOT, seed=0))
    fim = y[:, 0] == IDS.prefix
    assert abs(fim.mean() - 0.5) < 0.03
    u = document_draws(0, g, np.zeros_like(g))
    assert np.array_equal(fim, u[:, 0] < 0.5)
    assert all(abs(np.mean((u[:, j] >= q) & (u[:, j] < q + 0.1)) - 0.1) < 0.015
               for j in range(4) for q in np.arange(0, 1, 0.1))  # uniform draws
    spm = fim & (u[:, 1] < 0.25)
    assert abs(spm.sum() / fim.sum() - 0.25) < 0.03
    assert (y[spm, 1] == IDS.suffix).all()  # SPM: <|fim_prefix|> <|fim_suffix|> suffix ...
    assert np.array_equal(y[~fim], x[~fim])
    W = x.shape[1]
    for row, orig in zip(y[fim], x[fim], strict=True):
        # the sentinels in their order (the window's end may cut the last ones off), and the
        # window's own tokens but the last three, which the three sentinels pushed out
        sentinels = [int(v) for v in row if v in (3, 4, 5)]
        assert sentinels == [3, 5, 4][:len(sentinels)]
        kept = Counter(int(v) for v in row if v not in (3, 4, 5))
        assert kept <= Counter(orig.tolist()) and kept.total() == W - len(sentinels)


def test_stream_batches_do_not_depend_on_how_they_are_split(tmp_path):
    from codediff.data import TrainStream

    rng = np.random.default_rng(3)
    tokens = rng.integers(6, 60, 20_000).astype(np.uint16)
    tokens[rng.random(20_000) < 0.01] = EOT
    t = FimTransform(rate=0.5, spm_rate=0.5, ids=IDS, eot_id=EOT, seed=0)
    s = TrainStream(tokens, 32, seed=0, transform=t)
    whole = s.batch(40, 16)
    parts = np.concatenate([s.batch(40 + i, 4) for i in range(0, 16, 4)])
    assert np.array_equal(whole, parts)
    plain = TrainStream(tokens, 32, seed=0).batch(40, 16)
    assert not np.array_equal(whole, plain) and whole.shape == plain.shape


# ----------------------------------------------------------------------------- tokenizers

def test_codediff_bpe_reserves_the_sentinels_after_the_other_specials():
    from codediff.corpus.tokenizer import EOT as EOT_TOKEN
    from codediff.corpus.tokenizer import MASK, PAD, special_info, train_bpe

    texts = [(STDLIB / f).read_text(encoding="utf-8") for f in ("textwrap.py", "glob.py")]
    tok = train_bpe(iter(texts), 400, length=2, show_progress=False)
    info = special_info(tok, EOT_TOKEN, MASK, PAD)
    assert (info.eot_id, info.mask_id, info.pad_id) == (0, 1, 2)
    ids = fim_token_ids(tok)
    assert (ids.prefix, ids.middle, ids.suffix) == (3, 4, 5) and ids.tokens == FIM_TOKENS
    assert info.as_dict()["fim"] == {"prefix_id": 3, "middle_id": 4, "suffix_id": 5,
                                     "prefix_token": "<|fim_prefix|>",
                                     "middle_token": "<|fim_middle|>",
                                     "suffix_token": "<|fim_suffix|>"}
    # ordinary text never becomes a sentinel id, even when it spells one
    from codediff.corpus.tokenizer import encode_batch, prepare_for_corpus

    prepare_for_corpus(tok)
    [enc] = encode_batch(tok, ["x = '<|fim_prefix|>'\n"])
    assert not set(enc) & {0, 1, 2, 3, 4, 5}
    assert tok.decode(enc) == "x = '<|fim_prefix|>'\n"


def test_external_tokenizers_are_recorded_with_or_without_sentinels(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from codediff.corpus.tokenizer import special_info
    from codediff.fim import corpus_fim_ids

    plain = Tokenizer(WordLevel({"<s>": 0, "</s>": 1, "<pad>": 2, "[M]": 3, "a": 4},
                                unk_token="<pad>"))
    info = special_info(plain, "</s>", "[M]", "<pad>")
    assert info.fim is None and info.as_dict()["fim"] is None
    star = Tokenizer(WordLevel({"<|endoftext|>": 0, "<fim_prefix>": 1, "<fim_middle>": 2,
                                "<fim_suffix>": 3, "<fim_pad>": 4, "a": 5},
                               unk_token="<|endoftext|>"))
    ids = fim_token_ids(star)
    assert (ids.prefix, ids.middle, ids.suffix) == (1, 2, 3) and ids.tokens[0] == "<fim_prefix>"
    # a corpus made before the manifest recorded them: its tokenizer.json is looked at
    star.save(str(tmp_path / "tokenizer.json"))
    assert corpus_fim_ids({"tokenizer": {}}, tmp_path / "tokenizer.json") == ids
    assert corpus_fim_ids({"tokenizer": {"fim": None}}, tmp_path / "tokenizer.json") is None


# ----------------------------------------------------------------------------- training

def fim_corpus(out: Path) -> Path:
    """A small real corpus whose BPE reserves the sentinels, as `codediff corpus` does."""
    from tests import conftest_train

    old = conftest_train.SPECIALS
    conftest_train.SPECIALS = [*old, *FIM_TOKENS]
    try:
        return conftest_train.make_corpus(out, max_bytes=150_000)
    finally:
        conftest_train.SPECIALS = old


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    from tests.conftest_train import make_corpus

    root = tmp_path_factory.mktemp("fim")
    return {"fim": fim_corpus(root / "fim"),
            "old": make_corpus(root / "old", max_bytes=60_000)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def micro(**kw):
    from codediff.config import ModelConfig, TrainConfig

    base = dict(objective="ar", total_tokens=8 * 32 * 24, batch_size=8, lr=3e-3,
                val_tokens=512, eval_points=2, checkpoint_points=2, progress=False,
                log_every=4, warmup_steps=2, fim_rate=0.5, fim_spm_rate=0.5)
    base.update(kw)
    return ModelConfig(vocab_size=512, n_layer=1, n_head=2, d_model=32, max_seq_len=32), \
        TrainConfig(**base)


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    ckpts = sorted((run / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    return load_file(str(ckpts[-1] / "model.safetensors"))


def test_fim_run_resumed_equals_an_uninterrupted_one_and_records_its_rates(corpora, tmp_path):
    import torch

    from codediff.train import Dist, Trainer

    model, cfg = micro()
    ref = tmp_path / "ref"
    assert Trainer(corpora["fim"], ref, replace(model), cfg, Dist()).fit()["done"]
    # stopped with its state saved after 7 steps (as a kill after a save), then the same command
    cut = tmp_path / "cut"
    first = Trainer(corpora["fim"], cut, replace(model), replace(cfg, stop_after_steps=7),
                    Dist()).fit()
    assert first == {"steps": 7, "resumed_from": 0, "done": False}
    assert Trainer(corpora["fim"], cut, replace(model), cfg, Dist()).fit()["resumed_from"] == 7
    a, b = weights(ref), weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # FIM changed what was trained on
    plain = tmp_path / "plain"
    Trainer(corpora["fim"], plain, replace(model), replace(cfg, fim_rate=0.0, fim_spm_rate=0.0),
            Dist()).fit()
    c = weights(plain)
    assert not all(torch.equal(a[k], c[k]) for k in a)

    run = json.loads((ref / "run.json").read_text())
    assert (run["train"]["fim_rate"], run["train"]["fim_spm_rate"]) == (0.5, 0.5)
    ckpt = sorted((ref / "checkpoints").iterdir())[-1]
    meta = json.loads((ckpt / "config.json").read_text())["codediff"]
    assert (meta["fim_rate"], meta["fim_spm_rate"]) == (0.5, 0.5)
    assert (meta["fim"]["prefix_id"], meta["fim"]["middle_id"], meta["fim"]["suffix_id"]) == \
        (3, 4, 5)
    plain_meta = json.loads((sorted((plain / "checkpoints").iterdir())[-1] / "config.json")
                            .read_text())["codediff"]
    assert plain_meta["fim_rate"] == 0.0 and plain_meta["fim"] is None
    # another FIM rate is another run
    with pytest.raises(UserError, match=r"train\.fim_rate \(0\.5 -> 0\.25\)"):
        Trainer(corpora["fim"], ref, replace(model), replace(cfg, fim_rate=0.25), Dist()).fit()


def test_runs_from_before_fim_still_resume():
    from codediff.train import _config_diff

    old = {"train": {"lr": 1e-3, "objective": "ar"}}
    new = {"train": {"lr": 1e-3, "objective": "ar", "fim_rate": 0.0, "fim_spm_rate": 0.0}}
    assert _config_diff(old, new) == []
    assert _config_diff(old, {"train": {**new["train"], "fim_rate": 0.5}}) == \
        ["train.fim_rate (missing -> 0.5)"]


def test_refusals(corpora, tmp_path, capsys):
    from codediff.cli import main
    from codediff.train import Dist, Trainer

    base = ["train", "--corpus", str(corpora["fim"]), "--total-tokens", "2k", "--n-layer", "1",
            "--d-model", "32", "--n-head", "2", "--max-seq-len", "32", "--batch-size", "4",
            "--no-progress"]

    def refused(*args: str) -> str:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        try:
            code = main([*base, *args, "--out", str(out)])
        except SystemExit as e:  # refused by the option parser
            code = e.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("codediff: error:"), err
        assert not out.exists()
        return err

    err = refused("--objective", "mdm", "--fim-rate", "0.5")
    assert "--objective ar only" in err and "--fim-rate" in err
    assert "--fim-rate" in refused("--objective", "ar", "--fim-spm-rate", "0.5")
    assert "--fim-rate" in refused("--objective", "ar", "--fim-rate", "1.5")
    # a corpus from before codediff reserved the sentinels
    model, cfg = micro()
    with pytest.raises(UserError) as e:
        Trainer(corpora["old"], tmp_path / "old-run", model, cfg, Dist())
    msg = str(e.value)
    assert "\n" not in msg and "<|fim_prefix|>" in msg and "codediff corpus" in msg
    assert not (tmp_path / "old-run").exists()
    # ... still trains without FIM
    plain = replace(cfg, fim_rate=0.0, fim_spm_rate=0.0, total_tokens=8 * 32 * 2)
    run = tmp_path / "old-plain"
    assert Trainer(corpora["old"], run, replace(model), plain, Dist()).fit()["done"]
    # a run dir from before the FIM fields existed is still the same run
    record = json.loads((run / "run.json").read_text())
    del record["train"]["fim_rate"], record["train"]["fim_spm_rate"]
    (run / "run.json").write_text(json.dumps(record))
    assert Trainer(corpora["old"], run, replace(model), plain, Dist()).fit()["resumed_from"] == 2


def test_missing_sentinels_fix_fits_how_the_corpus_got_its_tokenizer(tmp_path):
    """Rebuilding a corpus adds the sentinels only where codediff trains the BPE: a corpus from
    `--tokenizer` is told to use codediff's BPE or another tokenizer instead."""
    from codediff.fim import missing_sentinels_fix, run_corpus_manifest, spellings_text

    assert spellings_text() == ("<|fim_prefix|>, <|fim_middle|>, <|fim_suffix|> or "
                                "<fim_prefix>, <fim_middle>, <fim_suffix>")
    loaded = missing_sentinels_fix({"tokenizer": {"loaded_from": "gpt2.json", "fim": None}})
    assert "--tokenizer gpt2.json" in loaded and "does not help" in loaded
    assert "rebuild the corpus with this" not in loaded
    assert "rebuild the corpus with this codediff version" in missing_sentinels_fix(
        {"tokenizer": {"trained": {"kind": "byte-level BPE"}, "fim": None}})
    for unknown in (None, {}, {"tokenizer": "odd"}):
        assert "codediff's own BPE" in missing_sentinels_fix(unknown)
    # a checkpoint finds its corpus's manifest through its run dir, when all of it is there
    ckpt = tmp_path / "run" / "checkpoints" / "tokens-1"
    ckpt.mkdir(parents=True)
    assert run_corpus_manifest(ckpt) is None
    (tmp_path / "corpus").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"corpus": {"path": str(
        tmp_path / "corpus")}}))
    assert run_corpus_manifest(ckpt) is None  # the corpus has moved or lost its manifest
    (tmp_path / "corpus" / "manifest.json").write_text(json.dumps({"tokenizer": {}}))
    assert run_corpus_manifest(ckpt) == {"tokenizer": {}}

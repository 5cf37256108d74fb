"""`codediff train` on a small real corpus: learning, the data order, resume after SIGKILL,
2-process DDP / FSDP2 equal to one process, and clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from codediff.checkpoints import load_checkpoint
from codediff.data import EpochOrder, TrainStream, open_corpus
from codediff.errors import UserError
from codediff.model import ModelConfig, Transformer
from codediff.objectives import (
    ObjectiveConfig,
    ar_loss,
    draw_noise,
    head_capacity,
    mdm_loss,
    micro_batch_generator,
)
from codediff.train import (
    Dist,
    TrainConfig,
    Trainer,
    log_spaced_steps,
    parse_tokens,
    resolve_compile_mode,
    schedule_lr,
)
from tests.conftest_train import make_corpus

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
MICRO = ["--n-layer", "2", "--d-model", "64", "--n-head", "4", "--max-seq-len", "32",
         "--val-tokens", "1024", "--eval-points", "3", "--checkpoint-points", "2",
         "--no-progress", "--log-every", "5"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the 2-core test machine is shared: intra-op threads only fight each other
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def micro_model() -> ModelConfig:
    return ModelConfig(vocab_size=512, n_layer=2, n_head=4, d_model=64, max_seq_len=32)


def micro_train(objective: str, **kw) -> TrainConfig:
    base = dict(objective=objective, total_tokens=8 * 32 * 150, batch_size=8, lr=3e-3,
                val_tokens=2048, eval_points=3, checkpoint_points=2, progress=False,
                log_every=10, warmup_steps=5)
    base.update(kw)
    return TrainConfig(**base)


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpts = sorted((run / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    return load_file(str(ckpts[-1] / "model.safetensors"))


def cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codediff.cli", "train", *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- learning

@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_loss_decreases_on_a_tiny_corpus(corpus, tmp_path, objective):
    out = tmp_path / objective
    summary = Trainer(corpus, out, micro_model(), micro_train(objective), Dist()).fit()
    assert summary["done"]
    m = metrics(out)
    vals = [r["val_loss"] for r in m if "val_loss" in r]
    assert len(vals) >= 3
    # from ~log(512) = 6.2 nats at init to clearly lower after 150 small steps
    assert vals[-1] < vals[0] - 0.7 and vals == sorted(vals, reverse=True), vals
    assert all(r["tokens"] == r["step"] * 8 * 32 for r in m)
    assert abs(m[-1]["epochs"] - m[-1]["tokens"] / json.loads(
        (out / "run.json").read_text())["epoch_tokens"]) < 1e-5
    run = json.loads((out / "run.json").read_text())
    assert run["schema"] == "codediff.run/2" and run["objective"] == objective
    assert run["model"]["causal"] is (objective == "ar")
    # the kept checkpoint loads through the generation API, with its meta
    ck = sorted((out / "checkpoints").iterdir())[-1]
    model, tok, meta = load_checkpoint(ck)
    assert meta["objective"] == objective and meta["tokens"] == 150 * 8 * 32
    assert meta["mask_id"] == tok.token_to_id("<|mask|>") and meta["eot_id"] == 0
    assert model.config.causal is (objective == "ar")


def test_mdm_validation_is_deterministic(corpus, tmp_path):
    t = Trainer(corpus, tmp_path / "r", micro_model(), micro_train("mdm", total_tokens=8 * 32),
                Dist())
    t.build()
    from codediff.data import val_windows

    t.val = val_windows(t.corpus.val, t.seq_len, 2048)
    a, b = t.validate(), t.validate()
    assert a == b and np.isfinite(a)


# ----------------------------------------------------------------------------- data order

def test_every_epoch_visits_all_sequences_in_a_new_seeded_order(corpus):
    c = open_corpus(corpus)
    s = TrainStream(c.train, 32, seed=7)
    n = s.sequences_per_epoch
    order = EpochOrder(n, 7)
    e0 = [order(g) for g in range(n)]
    e1 = [order(g) for g in range(n, 2 * n)]
    assert sorted(e0) == list(range(n)) and sorted(e1) == list(range(n))
    assert e0 != e1
    assert e0 == [EpochOrder(n, 7)(g) for g in range(n)]  # pure function of (seed, index)
    assert e0 != [EpochOrder(n, 8)(g) for g in range(n)]
    b = s.batch(n - 2, 4)  # a batch across the epoch boundary
    assert b.shape == (4, 33)
    assert np.array_equal(b[0], np.asarray(c.train[e0[-2] * 32:e0[-2] * 32 + 33]))
    assert np.array_equal(b[2], np.asarray(c.train[e1[0] * 32:e1[0] * 32 + 33]))


def test_schedules_and_grids():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, schedule="cosine")
    lrs = [schedule_lr(s, 100, cfg, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[9:-1], lrs[10:], strict=True))
    wsd = TrainConfig(lr=1.0, min_lr_ratio=0.1, schedule="wsd", decay_frac=0.2)
    lrs = [schedule_lr(s, 100, wsd, 10) for s in range(100)]
    assert lrs[50] == 1.0 and lrs[79] == 1.0 and lrs[-1] == pytest.approx(0.1)
    grid = log_spaced_steps(1, 1000, 4)
    assert grid == [1, 10, 100, 1000]
    assert parse_tokens("300M") == 300_000_000 and parse_tokens("1.5B") == 1_500_000_000
    with pytest.raises(UserError):
        parse_tokens("lots")


def test_runs_from_before_the_masked_head_option_still_resume():
    from codediff.train import _config_diff

    old = {"train": {"lr": 1e-3, "objective": "mdm"}}
    assert _config_diff(old, {"train": {"lr": 1e-3, "objective": "mdm",
                                        "mdm_masked_head": True}}) == []
    assert _config_diff(old, {"train": {"lr": 3e-4, "objective": "mdm"}}) != []


def test_compile_mode_auto_uses_cuda_graphs_only_on_one_gpu_without_accumulation():
    assert resolve_compile_mode("auto", 1, "cuda", 1) == "reduce-overhead"
    assert resolve_compile_mode("auto", 2, "cuda", 1) == "default"  # DDP / FSDP2 hooks
    assert resolve_compile_mode("auto", 1, "cuda", 4) == "default"  # accumulation
    assert resolve_compile_mode("auto", 1, "cpu", 1) == "default"
    assert resolve_compile_mode("max-autotune", 2, "cuda", 1) == "max-autotune"


def test_ar_input_corruption_ablations():
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x
            return torch.zeros(*x.shape, 50)

    x = torch.randint(3, 50, (4, 65))
    cfg = ObjectiveConfig("ar", mask_id=1, ar_input_mask_prob=0.3, ar_input_noise_prob=0.2,
                          vocab_size=50)
    noise = draw_noise(cfg, 4, 64, micro_batch_generator(0, 0, "cpu"), "cpu")
    ar_loss(Spy(), x, noise, cfg)
    inp = seen["x"]
    masked = (inp == 1).float().mean().item()
    changed = (inp != x[:, :-1]).float().mean().item()
    assert 0.2 < masked < 0.4 and 0.4 < changed < 0.6


@pytest.mark.parametrize("how", ["stratified", "antithetic"])
def test_masked_head_gives_the_full_heads_loss_and_gradients(how):
    # the mdm loss with the head on the gathered masked positions is the same function of the
    # weights as with the head on every position (float64: equal to rounding)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=300, n_layer=2, n_head=4, d_model=64,
                                    max_seq_len=128, causal=False)).double()
    B, L = 16, 128
    x = torch.randint(3, 300, (B, L + 1))
    sparse = ObjectiveConfig("mdm", mask_id=1, t_sampling=how)
    full = ObjectiveConfig("mdm", mask_id=1, t_sampling=how, masked_head=False)
    for index in range(3):
        results = []
        for cfg in (sparse, full):
            noise = draw_noise(cfg, B, L, micro_batch_generator(0, index, "cpu"), "cpu")
            model.zero_grad()
            loss = mdm_loss(model, x, noise, cfg)
            loss.backward()
            results.append((noise.get("head_tokens"), loss.detach(),
                            [p.grad.clone() for p in model.parameters()]))
        (k, loss_s, grad_s), (k_full, loss_f, grad_f) = results
        assert k_full is None and k is not None and k < 0.7 * B * L
        torch.testing.assert_close(loss_s, loss_f, rtol=1e-12, atol=0)
        for a, b in zip(grad_s, grad_f, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_masked_head_capacity_bounds_the_mask_and_caps_it_consistently():
    # the bound holds on many draws; uniform times have no bound (full head)
    B, L = 8, 256
    assert head_capacity(B, L, 1e-3, "uniform") is None
    assert head_capacity(2, 16, 1e-3, "stratified") is None  # too small to pay for the gather
    for how in ("stratified", "antithetic"):
        cfg = ObjectiveConfig("mdm", mask_id=1, t_sampling=how)
        K = head_capacity(B, L, 1e-3, how)
        for index in range(300):
            noise = draw_noise(cfg, B, L, micro_batch_generator(1, index, "cpu"), "cpu")
            count = int((noise["u"] < noise["t"][:, None]).sum())
            assert count <= K, (how, index, count, K)
    # forced overflow: the masked tokens past the K-th stay visible in the input and carry no loss
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, logits_index=None):
            seen["x"], seen["index"] = x, logits_index
            return torch.zeros(len(logits_index), 50, requires_grad=True)

    cfg = ObjectiveConfig("mdm", mask_id=1)
    x = torch.randint(3, 50, (B, L + 1))
    noise = draw_noise(cfg, B, L, micro_batch_generator(0, 0, "cpu"), "cpu")
    noise["head_tokens"] = 100
    mdm_loss(Spy(), x, noise, cfg)
    masked = seen["x"] == 1
    assert int(masked.sum()) == 100
    assert sorted(seen["index"].tolist()) == masked.flatten().nonzero().flatten().tolist()


# ----------------------------------------------------------------------------- resume

def test_sigkill_and_resume_ends_bit_identical(corpus, tmp_path):
    args = ["--corpus", str(corpus), "--objective", "mdm", "--total-tokens", str(8 * 32 * 60),
            "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5", *MICRO]
    ref = cli(*args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "codediff.cli", "train", *args, "--out",
                          str(run), "--save-every-steps", "1"], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    state = run / "state" / "trainer.json"
    while time.time() < deadline and p.poll() is None:
        if state.exists():
            try:
                if json.loads(state.read_text())["step"] >= 10:
                    break
            except (json.JSONDecodeError, FileNotFoundError):
                pass
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = json.loads(state.read_text())["step"]
    assert 10 <= killed_at < 60
    resumed = cli(*args, "--out", str(run))
    assert resumed.returncode == 0, resumed.stderr
    a, b = final_weights(tmp_path / "ref"), final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in metrics(run)]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume
    assert metrics(run)[-1] == {**metrics(tmp_path / "ref")[-1],
                                "tokens_per_s": metrics(run)[-1]["tokens_per_s"],
                                "mfu": metrics(run)[-1]["mfu"]}
    again = cli(*args, "--out", str(run))  # a finished run is left alone
    assert again.returncode == 0 and "nothing to do" in again.stdout


# ----------------------------------------------------------------------------- several processes

@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_the_same_global_batch(corpus, tmp_path, mode):
    args = ["--corpus", str(corpus), "--objective", "mdm", "--total-tokens", str(8 * 32 * 12),
            "--batch-size", "8", "--micro-batch", "4", "--lr", "3e-3", "--warmup-steps", "2",
            *MICRO]
    one = cli(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "codediff.cli", "train", *args,
                          "--dist", mode, "--out", str(tmp_path / "two")],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = [json.loads((tmp_path / r / "run.json").read_text()) for r in ("one", "two")]
    assert [(r["world_size"], r["accum"]) for r in runs] == [(1, 2), (2, 1)]
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), k
    la = [r["train_loss"] for r in metrics(tmp_path / "one")]
    lb = [r["train_loss"] for r in metrics(tmp_path / "two")]
    assert np.allclose(la, lb, atol=1e-4)


# ----------------------------------------------------------------------------- errors

def test_clear_errors(corpus, tmp_path):
    def err(*args):
        r = cli("--objective", "mdm", "--total-tokens", "10K", *MICRO, *args)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("codediff: error:") and r.stderr.count("\n") == 1, r.stderr
        return r.stderr

    assert "no such folder" in err("--corpus", str(tmp_path / "nope"), "--out", str(tmp_path))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"schema": "other/1"}))
    assert "not a codediff corpus" in err("--corpus", str(foreign), "--out", str(tmp_path / "o"))
    nomask = make_corpus(tmp_path / "nomask", max_bytes=50_000, mask_token=False)
    assert "no mask token" in err("--corpus", str(nomask), "--out", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()  # nothing written on bad input
    # an existing run dir with other settings is not overwritten
    ok = cli("--corpus", str(corpus), "--objective", "ar", "--total-tokens", "2K",
             "--batch-size", "4", "--out", str(tmp_path / "r"), *MICRO)
    assert ok.returncode == 0, ok.stderr
    r = cli("--corpus", str(corpus), "--objective", "ar", "--total-tokens", "2K",
            "--batch-size", "4", "--lr", "0.1", "--out", str(tmp_path / "r"), *MICRO)
    assert r.returncode == 2 and "other settings" in r.stderr and "lr" in r.stderr


def test_toml_and_command_line_override_the_preset(tmp_path):
    import argparse

    from codediff import train_cli

    toml = tmp_path / "run.toml"
    toml.write_text('lr = 5e-4\n[model]\nn_layer = 3\nqk_norm = true\n'
                    '[train]\nbatch_size = 64\nval_tokens = "2M"\n')
    p = argparse.ArgumentParser()
    train_cli.add_arguments(p)
    args = p.parse_args(["--corpus", "c", "--objective", "mdm", "--out", "o", "--config",
                         str(toml), "--total-tokens", "1.5B", "--n-layer", "4"])
    model, train, explicit = train_cli.build_configs(args)
    assert (model.n_layer, model.qk_norm, model.d_model) == (4, True, 384)  # CLI > TOML > preset
    assert (train.lr, train.batch_size, train.val_tokens) == (5e-4, 64, 2_000_000)
    assert train.total_tokens == 1_500_000_000 and train.objective == "mdm"
    toml.write_text("[model]\nlayers = 3\n")
    with pytest.raises(UserError, match="unknown key 'layers'"):
        train_cli.build_configs(args)


def test_nan_loss_stops_and_keeps_the_last_good_state(corpus, tmp_path):
    cfg = micro_train("ar", lr=1e30, grad_clip=0.0, warmup_steps=0, save_every_steps=1,
                      log_every=1)
    with pytest.raises(UserError, match="loss became nan.*last good state is step"):
        Trainer(corpus, tmp_path / "nan", micro_model(), cfg, Dist()).fit()
    state = json.loads((tmp_path / "nan" / "state" / "trainer.json").read_text())
    assert state["step"] >= 1


def test_out_of_memory_says_which_micro_batch_to_try(corpus, tmp_path, monkeypatch):
    # a CPU cannot run out of GPU memory: the third step raises what CUDA would raise
    real = Trainer.train_step

    def step(self, i):
        if i == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, i)

    monkeypatch.setattr(Trainer, "train_step", step)
    cfg = micro_train("mdm", save_every_steps=1, log_every=1)
    with pytest.raises(UserError, match=r"out of memory with micro-batch 8 x 32 tokens; pass a "
                       r"smaller --micro-batch \(e\.g\. 4\)"):
        Trainer(corpus, tmp_path / "oom", micro_model(), cfg, Dist()).fit()
    state = json.loads((tmp_path / "oom" / "state" / "trainer.json").read_text())
    assert state["step"] == 2  # the steps before the failure are kept; resuming continues


def test_out_of_memory_is_recognised_in_every_form_cuda_reports_it():
    from codediff.errors import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                                         "`cublasCreate(handle)`"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only the device's errors

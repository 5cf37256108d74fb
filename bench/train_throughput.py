"""Training throughput: codediff's trainer against a plain compiled PyTorch loop, ar and mdm.

Both run the same `codediff.model.Transformer` on the same configuration in one process:
- plain: `torch.compile(model)`, cross-entropy in eager PyTorch on its float32 logits, a default
  AdamW step, random tokens already on the device (no data loading);
- codediff: `Trainer.train_step` exactly as `codediff train` runs it (memory-mapped corpus,
  seeded epoch order, per-micro-batch noise, loss compiled together with the model, gradient
  clipping, fused AdamW, learning-rate schedule), on a synthetic random-token corpus dir.

MFU is model FLOPs (6 x matmul params + attention, `ModelConfig.flops_per_token`) per second over
the bf16 matmul rate measured on the same card in the same run.

  python bench/train_throughput.py                       # H100: tiny and small, ar and mdm
  python bench/train_throughput.py --device cpu --toy    # a minute on a laptop CPU
  python bench/train_throughput.py --configs tiny --objectives ar --extra fim --repeats 5
                                                         # ar against ar --fim-rate 0.5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codediff.model import PRESETS, ModelConfig, Transformer  # noqa: E402
from codediff.train import Dist, TrainConfig, Trainer, schedule_lr  # noqa: E402

# name -> (model config, batch, seq)
CONFIGS = {
    "tiny": (replace(PRESETS["tiny"], vocab_size=8192), 128, 256),
    "small": (replace(PRESETS["small"], vocab_size=32768), 32, 1024),
    "toy": (ModelConfig(vocab_size=512, n_layer=2, n_head=4, d_model=64, max_seq_len=64), 8, 64),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device) -> float:
    """Measured dense matmul FLOP/s (bf16 on CUDA, float32 on CPU), median of 5 timings."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps, times = (10, []) if device.type == "cuda" else (3, [])
    for _ in range(3):
        a @ b
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        times.append((time.perf_counter() - t0) / reps)
    return 2 * n**3 / statistics.median(times)


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy, bytes read + written per second."""
    n = (1 << 28) if device.type == "cuda" else (1 << 22)
    a = torch.randn(n, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    sync(device)
    return 2 * a.numel() * 4 * 10 / (time.perf_counter() - t0)


def make_corpus(root: Path, vocab: int, tokens: int) -> Path:
    """A random-token corpus dir in the docs/formats.md layout (no tokenizer training)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from codediff.formats import CORPUS_SCHEMA

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", tokens), ("val", 1 << 16)):
        ids = rng.integers(6, vocab, n, dtype=np.uint16)
        # documents of ~2000 tokens on average (about one per `tiny` window, as in the stdlib
        # corpus), which is what the `fim` variant's per-document transform sees
        ids[rng.random(n) < 1 / 2000] = 0
        ids.tofile(root / f"{name}.bin")
    Tokenizer(WordLevel({"<|endoftext|>": 0, "<|mask|>": 1, "<|pad|>": 2, "<|fim_prefix|>": 3,
                         "<|fim_middle|>": 4, "<|fim_suffix|>": 5}, unk_token="<|pad|>")) \
        .save(str(root / "tokenizer.json"))
    manifest = {"schema": CORPUS_SCHEMA, "dtype": "uint16",
                "tokenizer": {"vocab_size": vocab, "eot_id": 0, "mask_id": 1, "pad_id": 2},
                "unique_tokens": tokens, "val_tokens": 1 << 16,
                "train": {"file": "train.bin", "tokens": tokens},
                "val": {"file": "val.bin", "tokens": 1 << 16}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def time_steps(step, n_warm: int, n_time: int, repeats: int, device) -> list[float]:
    """Seconds per step, one median-free mean per repeat (steps are long and uniform)."""
    i = 0
    for _ in range(n_warm):
        step(i)
        i += 1
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n_time):
            step(i)
            i += 1
        sync(device)
        out.append((time.perf_counter() - t0) / n_time)
    return out


def profile_steps(step, n: int, device, label: str, out_dir: str | None) -> None:
    """Top CUDA kernels over n steps (after the timed ones) as a table, for looking back."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            step(10_000 + i)
        sync(device)
    avg = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total"):
        try:
            table = avg.table(sort_by=key, row_limit=25, max_name_column_width=70)
            break
        except (AttributeError, KeyError, ValueError):
            table = ""
    cpu = avg.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70)
    text = f"== profile {label}: {n} steps ==\n{table}\n== by host time ==\n{cpu}\n"
    if not out_dir:
        print(text, flush=True)
    else:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(out_dir) / "profiles.txt", "a") as f:
            f.write(text)


PROFILE: dict = {"steps": 0, "dir": None, "host": 0}


def host_breakdown(t, n: int, device, label: str) -> dict:
    """Host-side seconds per step of each phase of `Trainer.train_step` (world 1, no
    accumulation), with no syncs inside the loop: the time each phase takes to enqueue its work.
    A phase that waits (a full launch queue, a pinned buffer still in use) counts its wait too,
    so a sum close to the step time means "CPU-bound" only when the GPU profile agrees."""
    from codediff.objectives import draw_noise, micro_batch_generator

    phases = dict.fromkeys(("data", "noise", "forward", "backward", "clip", "optim", "zero"), 0.0)
    sync(device)
    wall0 = time.perf_counter()
    for i in range(n):
        step = 20_000 + i
        c = time.perf_counter
        t0 = c()
        _, g, x = next(iter(t.micro_batches(step)))
        t1 = c()
        gen = micro_batch_generator(t.cfg.seed, g, device)
        noise = draw_noise(t.obj, x.shape[0], t.seq_len, gen, device)
        t2 = c()
        fn = t.loss_for(noise)
        with t.autocast():
            loss = fn(t.wrapped, x, noise, t.obj)
        t3 = c()
        loss.backward()
        t4 = c()
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.grad_clip)
        t5 = c()
        t.optimizer.step()
        t6 = c()
        t.optimizer.zero_grad(set_to_none=True)
        t7 = c()
        for k, a, b in (("data", t0, t1), ("noise", t1, t2), ("forward", t2, t3),
                        ("backward", t3, t4), ("clip", t4, t5), ("optim", t5, t6),
                        ("zero", t6, t7)):
            phases[k] += b - a
    host = sum(phases.values()) / n
    sync(device)
    wall = (time.perf_counter() - wall0) / n
    row = {"host_breakdown": label, "wall_ms": wall * 1e3, "host_ms": host * 1e3,
           **{f"{k}_ms": v / n * 1e3 for k, v in phases.items()}}
    print(json.dumps(row), flush=True)
    return row


def plain_loop(cfg: ModelConfig, objective: str, batch: int, seq: int, device, compile_: bool,
               n_warm: int, n_time: int, repeats: int) -> list[float]:
    torch.manual_seed(0)
    model = Transformer(replace(cfg, causal=objective == "ar", max_seq_len=seq)).to(device)
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.randint(3, cfg.vocab_size, (4, batch, seq + 1), device=device)
    amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else None

    def step(i: int) -> None:
        x = data[i % 4]
        with amp if amp is not None else torch.autocast("cpu", enabled=False):
            if objective == "ar":
                logits = fwd(x[:, :-1])
                loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
            else:
                x0 = x[:, :-1]
                t = 1e-3 + (1 - 1e-3) * torch.rand(batch, device=device)
                masked = torch.rand(x0.shape, device=device) < t[:, None]
                logits = fwd(torch.where(masked, 1, x0))
                ce = F.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none")
                loss = (ce.view_as(x0) * masked / t[:, None]).sum() / x0.numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    secs = time_steps(step, n_warm, n_time, repeats, device)
    if PROFILE["steps"]:
        profile_steps(step, PROFILE["steps"], device, f"plain-{cfg.d_model}d-{objective}",
                      PROFILE["dir"])
    return secs


def codediff_loop(cfg: ModelConfig, objective: str, batch: int, seq: int, device, corpus: Path,
                  compile_: bool, compile_mode: str, n_warm: int, n_time: int,
                  repeats: int) -> list[float]:
    torch.manual_seed(0)
    import torch._inductor.config as inductor_config

    # a variant is "+"-joined: a compile mode, "cdt" (inductor coordinate-descent tuning),
    # an attention kernel (cudnn, flash, efficient), "fullhead" (mdm: the output head on every
    # position instead of the masked ones only), "nofusedrope" (RoPE left to the compiler)
    # and/or "fim" (ar: --fim-rate 0.5, the FIM transform of codediff.fim on every batch)
    parts = compile_mode.split("+")
    flags = ("cdt", "cudnn", "flash", "efficient", "fullhead", "nofusedrope", "fim")
    inductor_config.coordinate_descent_tuning = "cdt" in parts
    attention = next((p for p in parts if p in ("cudnn", "flash", "efficient")), "auto")
    mode = next((p for p in parts if p not in flags), "auto")
    tcfg = TrainConfig(objective=objective, total_tokens=10**12, batch_size=batch,
                       micro_batch=batch, lr=1e-4, compile=compile_, compile_mode=mode,
                       attention=attention, progress=False, val_tokens=seq,
                       mdm_masked_head="fullhead" not in parts,
                       fim_rate=0.5 if "fim" in parts else 0.0)
    with tempfile.TemporaryDirectory() as out:
        t = Trainer(corpus, out, replace(cfg, max_seq_len=seq), tcfg, Dist(device=device))
        t.build()
        if "nofusedrope" in parts:  # RoPE by the compiler instead of codediff's Triton kernel
            for m in t.model.modules():
                if hasattr(m, "fused_rope"):
                    m.fused_rope = False
        warm = t.warmup

        def step(i: int) -> None:
            lr = schedule_lr(i, t.steps, tcfg, warm)
            for g in t.optimizer.param_groups:
                g["lr"] = lr
            t.train_step(i)

        secs = time_steps(step, n_warm, n_time, repeats, device)
        if PROFILE["host"]:
            host_breakdown(t, PROFILE["host"], device, f"{cfg.d_model}d-{objective}-{compile_mode}")
        if PROFILE["steps"]:
            profile_steps(step, PROFILE["steps"], device,
                          f"codediff-{cfg.d_model}d-{objective}-{compile_mode}", PROFILE["dir"])
        return secs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--objectives", default="ar,mdm")
    ap.add_argument("--toy", action="store_true", help="a 2-layer d=64 model (CPU smoke run)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--extra", default="", help="extra codediff variants: compile modes, e.g. "
                    "reduce-overhead (CUDA graphs), run for the first config")
    ap.add_argument("--extra-configs", default=None, help="configs that get the extra variants")
    ap.add_argument("--only-extra", action="store_true",
                    help="skip plain/default loops except for --baseline-configs")
    ap.add_argument("--baseline-configs", default="")
    ap.add_argument("--warm", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip what would start after this")
    ap.add_argument("--out", default=None, help="write results as JSON lines here")
    ap.add_argument("--profile", type=int, default=0,
                    help="profile this many steps of each loop (tables to --profile-dir)")
    ap.add_argument("--profile-dir", default=None)
    ap.add_argument("--host", type=int, default=0,
                    help="time the host side of each train-step phase over this many steps")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    start = time.time()
    configs = ["toy"] if args.toy else args.configs.split(",")
    peak = matmul_rate(device)
    bw = copy_bandwidth(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    head = {"device": name, "torch": torch.__version__, "matmul_tflops": peak / 1e12,
            "copy_gb_s": bw / 1e9}
    print(json.dumps(head), flush=True)
    out = open(args.out, "a") if args.out else None
    if out:
        out.write(json.dumps(head) + "\n")
        out.flush()
    compile_ = not args.no_compile
    PROFILE.update(steps=args.profile, dir=args.profile_dir, host=args.host)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vocab = min(CONFIGS[c][0].vocab_size for c in configs)  # ids valid for every model
        corpus = make_corpus(Path(tmp) / "corpus", vocab, 1 << 22)
        for cname in configs:
            cfg, batch, seq = CONFIGS[cname]
            big = cname == "small"
            n_warm = args.warm or (4 if big else 8)
            n_time = args.steps or (30 if big else 100)  # ~1 cut mdm micro-batch per 100
            for obj in args.objectives.split(","):
                variants = [("plain", None), ("codediff", "auto")]
                if cname in (args.extra_configs or configs[0]).split(","):
                    variants += [("codediff", m) for m in args.extra.split(",")
                                 if m and not (obj == "ar" and "fullhead" in m)
                                 and not (obj == "mdm" and "fim" in m.split("+"))]
                if args.only_extra and cname not in args.baseline_configs.split(","):
                    variants = [v for v in variants if v[1] not in (None, "auto")]
                for kind, mode in variants:
                    if time.time() - start > args.budget_s:
                        print(f"budget spent: skipping {cname} {obj} {kind} {mode}", flush=True)
                        continue
                    t0 = time.time()
                    if kind == "plain":
                        secs = plain_loop(cfg, obj, batch, seq, device, compile_, n_warm, n_time,
                                          args.repeats)
                    else:
                        secs = codediff_loop(cfg, obj, batch, seq, device, corpus, compile_,
                                             mode, n_warm, n_time, args.repeats)
                    mcfg = replace(cfg, causal=obj == "ar")
                    tok_s = [batch * seq / s for s in secs]
                    best = statistics.median(tok_s)
                    row = {"config": cname, "objective": obj, "loop": kind, "mode": mode,
                           "batch": batch, "seq": seq, "params": mcfg.num_params(),
                           "tokens_per_s": best, "tokens_per_s_repeats": tok_s,
                           "mfu": best * mcfg.flops_per_token(seq) / peak,
                           "mfu_6n": best * 6 * mcfg.num_params(embeddings=False) / peak,
                           "wall_s": time.time() - t0}
                    if device.type == "cuda":
                        row["max_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
                        torch.cuda.reset_peak_memory_stats(device)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if out:
                        out.write(json.dumps(row) + "\n")
                        out.flush()
                    torch._dynamo.reset()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    print()
    print(f"{name}: bf16 matmul {peak / 1e12:.0f} TFLOP/s, copy {bw / 1e9:.0f} GB/s")
    print(f"{'config':<6} {'obj':<4} {'loop':<24} {'tok/s':>11} {'MFU':>6} {'vs plain':>9}")
    for r in rows:
        plain = next((p for p in rows if p["config"] == r["config"] and p["objective"] ==
                      r["objective"] and p["loop"] == "plain"), None)
        ratio = r["tokens_per_s"] / plain["tokens_per_s"] if plain else math.nan
        loop = r["loop"] + (f" ({r['mode']})" if r["mode"] not in (None, "auto") else "")
        print(f"{r['config']:<6} {r['objective']:<4} {loop:<24} {r['tokens_per_s']:>11,.0f} "
              f"{r['mfu']:>6.1%} {ratio:>8.2f}x")
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generation throughput: tokens/s and NFE of DLM decoding strategies beside AR with a KV cache.

For an `mdm` model and the equal `ar` model, on the prompts of a task (HumanEval by default):

  ar_kv              AR, KV cache (greedy)
  dlm_1tok           low_confidence, one token per step (steps = gen_length), no cache
  dlm_threshold      threshold tau (Fast-dLLM parallel decoding), no cache
  dlm_thr_prefix     threshold + prefix cache
  dlm_thr_dual       threshold + dual cache

Each runs through `codediff generate` (so the numbers are those of the real command) and we read
the sidecar totals. Quality beside each, without the judge: the mean per-token NLL of the
completions under the AR model (fluency as the AR model sees it), its paired difference from the
one-token-per-step row with a 95% interval over the tasks (an interval holding 0: unchanged
within noise) and, for the DLM rows, the share of samples identical to the one-token-per-step
output. pass@1 comes from `--judge` (runs
`codediff evaluate` on each samples file; needs the sandbox) or afterwards by hand.

  python bench/generate_throughput.py --ar runs/ar --mdm runs/mdm --limit 32 --out bench-out
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codediff.sampling import DEFAULT_TAU  # noqa: E402 - torch-free; after the path set-up


def configs(args: argparse.Namespace) -> dict[str, dict]:
    dlm = dict(gen_length=args.gen_length, block_length=args.block_length,
               cuda_graphs=args.cuda_graphs)
    thr = dict(dlm, sampler="threshold", tau=args.tau)
    return {
        "ar_kv": dict(model=args.ar, max_new_tokens=args.gen_length),
        "dlm_1tok": dict(dlm, model=args.mdm, sampler="low_confidence", steps=args.gen_length),
        "dlm_threshold": dict(thr, model=args.mdm),
        "dlm_thr_prefix": dict(thr, model=args.mdm, cache="prefix"),
        "dlm_thr_dual": dict(thr, model=args.mdm, cache="dual"),
        **{f"dlm_thr{t:g}_dual": dict(dlm, model=args.mdm, sampler="threshold", tau=t,
                                      cache="dual") for t in args.extra_taus},
    }


def ar_nll(ar_backend, rows: list[dict], prompts: dict[str, list[int]], max_len: int
           ) -> dict[str, tuple[float, int]]:
    """Per task id: summed NLL (nats) of the completion's tokens under the AR model, prompt as
    context, and their count (empty completions are left out)."""
    import torch
    import torch.nn.functional as F

    tok = ar_backend.tokenizer
    out = {}
    for r in rows:
        comp = tok.encode(r["completion"])
        if not comp:
            continue
        ids = (prompts[r["task_id"]] + comp)[-max_len:]
        n = min(len(comp), len(ids) - 1)
        x = torch.tensor([ids], device=ar_backend.device)
        logits = ar_backend.forward(x)[0, -n - 1:-1].float()
        out[r["task_id"]] = (F.cross_entropy(logits, x[0, -n:], reduction="sum").item(), n)
    return out


def paired_delta(nll: dict[str, tuple[float, int]], base: dict[str, tuple[float, int]]
                 ) -> tuple[float, float] | None:
    """Mean over tasks of (per-token NLL here - per-token NLL of the baseline) and its 95%
    half-width (normal approximation over the tasks both have): "unchanged within noise" means
    the interval holds 0."""
    import math

    d = [nll[t][0] / nll[t][1] - base[t][0] / base[t][1] for t in nll if t in base]
    if len(d) < 2:
        return None
    m = sum(d) / len(d)
    var = sum((v - m) ** 2 for v in d) / (len(d) - 1)
    return m, 1.96 * math.sqrt(var / len(d))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ar", required=True, help="ar run dir or checkpoint")
    p.add_argument("--mdm", required=True, help="mdm run dir or checkpoint")
    p.add_argument("--task", default="humaneval")
    p.add_argument("--limit", type=int, default=32, help="first N problems")
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--tau", type=float, default=DEFAULT_TAU)
    p.add_argument("--extra-taus", type=float, nargs="*", default=[],
                   help="also threshold + dual cache at these tau (the speed/quality trade-off)")
    p.add_argument("--batch-size", type=int, default=1, help="1 = latency setting of Fast-dLLM")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="DLM configurations replay their steps as CUDA graphs (default; "
                   "--no-cuda-graphs: eager)")
    p.add_argument("--only", nargs="+", default=None, help="run only these configurations")
    p.add_argument("--judge", action="store_true", help="also run `codediff evaluate`")
    p.add_argument("--rescore", action="store_true",
                   help="no generation: recompute quality (and --judge) from the samples in --out")
    p.add_argument("--out", required=True, help="folder for samples and results.json")
    p.add_argument("--progress", action="store_true", help="show generation progress bars")
    args = p.parse_args()

    import torch
    from codediff.harness.tasks import load_task

    from codediff.backends import load_backend
    from codediff.formats import samples_meta
    from codediff.generate import GenerateConfig, meta_path, run_generate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = configs(args)
    if args.only:
        plan = {k: v for k, v in plan.items() if k in args.only}

    # warm-up (CUDA context, kernels) outside the timed runs
    for name in ("ar_kv", "dlm_thr_dual"):
        if name in plan and not args.rescore:
            warm = out / f"warmup-{name}.jsonl"
            run_generate(GenerateConfig(task=args.task, out=str(warm), limit=2, progress=False,
                                        overwrite=True, **plan[name]))
            warm.unlink()
            meta_path(warm).unlink()

    prev = {}
    if (out / "results.json").exists():
        prev = json.loads((out / "results.json").read_text())
    results = {}
    for name, kw in plan.items():
        f = out / f"{name}.jsonl"
        wall = prev.get("results", {}).get(name, {}).get("wall_seconds")
        if not args.rescore:
            t0 = time.perf_counter()
            run_generate(GenerateConfig(task=args.task, out=str(f), limit=args.limit,
                                        batch_size=args.batch_size, overwrite=True,
                                        progress=args.progress, **kw))
            wall = time.perf_counter() - t0
        elif not f.exists():
            continue
        meta = samples_meta(json.loads(meta_path(f).read_text()))  # either sidecar layout
        tot = meta["totals"]
        results[name] = {
            "tokens_per_s": tot["tokens_per_second"], "tokens": tot["tokens"],
            "nfe_per_sample": tot["nfe"] / meta["samples"],
            "tokens_per_forward": tot["tokens_per_forward"],
            "gflops_per_token": (tot["flops_per_token"] or 0) / 1e9,
            "seconds": tot["seconds"], "wall_seconds": wall, "samples": meta["samples"],
            "settings": meta["settings"], "device": meta["model"]["device"],
        }
        print(f"{name}: {results[name]['tokens_per_s']:.0f} tok/s, "
              f"NFE {results[name]['nfe_per_sample']:.1f}", flush=True)

    # quality without the judge
    task = load_task(args.task)
    fmt = task.format(None)
    # the AR judge of fluency; a rescore away from the models keeps the earlier numbers
    ar = load_backend(args.ar, device=device) if Path(args.ar).exists() else None
    prompts = ({p.task_id: ar.tokenizer.encode(task.prompt_for(p, fmt.name))
                for p in task.problems[: args.limit]} if ar is not None else {})
    base = {}
    if (out / "dlm_1tok.jsonl").exists():
        base = {r["task_id"]: r["completion"] for r in
                map(json.loads, (out / "dlm_1tok.jsonl").read_text().splitlines())}
    per_task = {}
    for name in results:
        rows = [json.loads(x) for x in (out / f"{name}.jsonl").read_text().splitlines()]
        if ar is not None:
            per_task[name] = ar_nll(ar, rows, prompts, ar.max_seq_len or 10**9)
            tot = sum(v[0] for v in per_task[name].values())
            results[name]["ar_nll"] = tot / max(sum(v[1] for v in per_task[name].values()), 1)
            if "dlm_1tok" in per_task:
                results[name]["ar_nll_delta"] = paired_delta(per_task[name], per_task["dlm_1tok"])
        else:
            for key in ("ar_nll", "ar_nll_delta"):
                results[name][key] = prev.get("results", {}).get(name, {}).get(key)
        if name.startswith("dlm") and base:
            same = sum(r["completion"] == base.get(r["task_id"]) for r in rows)
            results[name]["same_as_1tok"] = same / len(rows)
        results[name]["empty_completions"] = sum(not r["completion"].strip() for r in rows)
        if args.judge:
            import subprocess

            res = out / f"{name}-results"
            subprocess.run([sys.executable, "-m", "codediff.cli", "evaluate", "--task", args.task,
                            "--samples", str(out / f"{name}.jsonl"), "--out", str(res),
                            "--k", "1", "--quiet"], check=True, cwd=ROOT)
            rj = json.loads((res / "results.json").read_text())
            results[name]["pass@1"] = rj["pass_at_k"]["base"].get("pass@1")

    dev = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    if args.rescore:
        dev = prev.get("device", dev)
    (out / "results.json").write_text(json.dumps({"device": dev, "args": vars(args),
                                                  "results": results}, indent=1) + "\n")
    one = results.get("dlm_1tok", {}).get("tokens_per_s")
    print(f"\n{dev}, {args.task} first {args.limit}, gen {args.gen_length}, "
          f"block {args.block_length}, batch {args.batch_size}")
    print("| config | tok/s | x 1-tok | NFE/sample | tok/forward | GFLOP/tok | AR NLL | "
          "AR NLL - 1-tok (95%) | same as 1-tok | pass@1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        speed = f"{r['tokens_per_s'] / one:.1f}x" if one else "-"
        same = f"{r['same_as_1tok']:.0%}" if "same_as_1tok" in r else "-"
        p1 = f"{r['pass@1']:.3f}" if r.get("pass@1") is not None else "-"
        delta = r.get("ar_nll_delta")
        delta = f"{delta[0]:+.3f} ± {delta[1]:.3f}" if delta and name != "dlm_1tok" else "-"
        print(f"| {name} | {r['tokens_per_s']:.0f} | {speed} | {r['nfe_per_sample']:.1f} | "
              f"{r['tokens_per_forward']:.2f} | {r['gflops_per_token']:.3f} | "
              f"{r['ar_nll'] or float('nan'):.3f} | {delta} | {same} | {p1} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

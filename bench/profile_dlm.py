"""Where a DLM decoding step's time goes on a GPU: kernels, host time, CUDA-graph captures.

For each configuration, one batch of HumanEval prompts is decoded once to warm up, then again
under torch.profiler. Printed per configuration: wall time per step, the GPU's busy time per
step (sum of kernel times), the time spent capturing graphs, and the kernels that take the most
GPU time. Wall minus busy is what the host adds (launches, Python bookkeeping, syncs).

The model may be a trained run dir (`--model`) or a randomly initialised preset on a corpus's
tokenizer (`--preset tiny --corpus corpora/gen-8m`): kernel costs per step do not depend on the
weights, only the number of steps does.

  python bench/profile_dlm.py --preset tiny --corpus corpora/gen-8m --batch-size 64 --cuda-graphs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# the DLM rows of bench/generate_throughput.py, by the same names:
# name -> (sampler, tau, cache); one token per step uses steps = gen_length
CONFIGS = {
    "dlm_1tok": ("low_confidence", None, "none"),
    "dlm_threshold": ("threshold", 0.9, "none"),
    "dlm_thr_prefix": ("threshold", 0.9, "prefix"),
    "dlm_thr_dual": ("threshold", 0.9, "dual"),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="mdm run dir or checkpoint")
    p.add_argument("--preset", help="random model of this preset (with --corpus)")
    p.add_argument("--corpus", help="corpus dir whose tokenizer the random model uses")
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--device", default="cuda", help="cpu: a dry run of this script")
    args = p.parse_args()

    import torch
    from codediff.harness.tasks import load_task
    from torch.profiler import ProfilerActivity, profile

    from codediff.backends import load_backend, native_backend
    from codediff.sampling import graphs
    from codediff.sampling.dlm import DLMSettings, generate_dlm
    from codediff.sampling.rules import CommitRule

    dev = torch.device(args.device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if args.model:
        b = load_backend(args.model, device=args.device)
    else:
        from tokenizers import Tokenizer

        from codediff.data import open_corpus
        from codediff.model import Transformer, preset

        c = open_corpus(args.corpus)
        torch.manual_seed(0)
        m = Transformer(preset(args.preset, vocab_size=c.vocab_size, causal=False,
                               max_seq_len=args.max_seq_len))
        m.to(torch.bfloat16 if dev.type == "cuda" else torch.float32).to(dev)
        meta = {"objective": "mdm", "mask_id": c.mask_id, "eot_id": c.eot_id,
                "pad_id": c.pad_id}
        b = native_backend(m, Tokenizer.from_file(str(c.tokenizer_path)), meta, device=dev,
                           dtype=next(m.parameters()).dtype)
    task = load_task("humaneval")
    fmt = task.format(None)
    budget = b.max_seq_len - args.gen_length
    prompts = [b.tokenizer.encode(task.prompt_for(q, fmt.name))[-budget:]
               for q in task.problems[: args.batch_size]]
    lengths = [len(x) for x in prompts]
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    print(f"{name}, batch {len(prompts)}, prompt tokens "
          f"{min(lengths)}..{max(lengths)} (mean {sum(lengths) / len(lengths):.0f}), "
          f"gen {args.gen_length}, block {args.block_length}, graphs {args.cuda_graphs}")

    captures: list[float] = []
    real = graphs.BlockGraph.warm_and_capture.__func__

    def timed(cls, fn, inputs):
        sync()
        t0 = time.perf_counter()
        out = real(cls, fn, inputs)
        sync()
        captures.append(time.perf_counter() - t0)
        return out

    graphs.BlockGraph.warm_and_capture = classmethod(timed)
    for name in args.configs:
        sampler, tau, cache = CONFIGS[name]
        s = DLMSettings(gen_length=args.gen_length, block_length=args.block_length,
                        rule=CommitRule(sampler, tau=tau or 0.9), cache=cache, early_stop=False,
                        steps=args.gen_length if sampler == "low_confidence" else None,
                        cuda_graphs=args.cuda_graphs)
        generate_dlm(b, prompts, s)  # warm-up
        captures.clear()
        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            out = generate_dlm(b, prompts, s)
            sync()
            wall = time.perf_counter() - t0
        steps = max(o.nfe for o in out)  # no early stop: every row takes every step
        events = [e for e in prof.key_averages()
                  if e.self_device_time_total > 0 or dev.type == "cpu"]
        busy = sum(e.self_device_time_total for e in events) / 1e6
        print(f"\n== {name}: {steps} steps, wall {wall * 1e3 / steps:.2f} ms/step, GPU busy "
              f"{busy * 1e3 / steps:.2f} ms/step, host-only {(wall - busy) * 1e3 / steps:.2f} "
              f"ms/step; {len(captures)} captures, {sum(captures) * 1e3:.0f} ms "
              f"({sum(captures) / wall:.0%} of wall)")
        events.sort(key=lambda e: -e.self_device_time_total)
        for e in events[: args.top]:
            print(f"  {e.self_device_time_total / 1e3 / steps:8.3f} ms/step  {e.count / steps:6.1f}"
                  f"/step  {e.key[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

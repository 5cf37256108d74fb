"""`codediff generate`: the command-line face of codediff.generate (light: no torch at import).

Example:
  codediff generate --model runs/mdm-5M --task humaneval --sampler threshold --tau 0.9 \\
      --gen-length 256 --block-length 32 --cache dual --n 10 --temperature 0.8 \\
      --out samples.jsonl
  torchrun --nproc-per-node 8 -m codediff.cli generate --model /models/llada-8b \\
      --trust-remote-code --task humaneval -n 10 --out samples.jsonl
"""

from __future__ import annotations

import argparse

from codediff.sampling import CACHES, SAMPLERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    io = parser.add_argument_group("what to generate")
    io.add_argument("--model", required=True,
                    help="a codediff run dir or checkpoint folder, or a Hugging Face model folder")
    io.add_argument("--task", required=True, help="task name (see `codediff tasks`)")
    io.add_argument("--out", required=True, help="samples file to write (samples.jsonl)")
    io.add_argument("--prompt-format", default=None,
                    help="prompt format of the task spec (default: the task's default)")
    io.add_argument("--data", default=None,
                    help="task data file or folder (default: $CODEDIFF_DATA or packaged data)")
    # `-n` too: under torchrun `--n` is an ambiguous abbreviation of torchrun's own options
    io.add_argument("-n", "--n", dest="n", type=int, default=1, help="samples per problem")
    io.add_argument("--limit", type=int, default=None, help="only the first N problems")
    io.add_argument("--task-ids", nargs="+", default=None, help="only these task ids")
    io.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    io.add_argument("--seed", type=int, default=0,
                    help="base seed; each sample's seed derives from it, its task and its id")
    io.add_argument("--overwrite", action="store_true",
                    help="discard an existing or unfinished output made with other settings")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")

    samp = parser.add_argument_group("sampling (both kinds)")
    samp.add_argument("--temperature", type=float, default=0.0,
                      help="0 = greedy (AR) / argmax (DLM Gumbel-max)")
    samp.add_argument("--no-token-healing", action="store_true",
                      help="keep the prompt's last token as is (by default it is taken back and "
                           "the answer's first token must extend its text)")

    ar = parser.add_argument_group("autoregressive models")
    ar.add_argument("--max-new-tokens", type=int, default=512)
    ar.add_argument("--top-p", type=float, default=1.0)
    ar.add_argument("--top-k", type=int, default=0, help="0 = off")
    ar.add_argument("--no-kv-cache", action="store_true",
                    help="recompute the whole sequence each step (for checking the cache)")

    dlm = parser.add_argument_group("diffusion models")
    dlm.add_argument("--sampler", default="low_confidence", choices=tuple(SAMPLERS),
                     help="which masked positions to commit at each step")
    dlm.add_argument("--tau", type=float, default=0.9, help="threshold sampler: confidence bar")
    dlm.add_argument("--factor", type=float, default=1.0, help="factor sampler: f")
    dlm.add_argument("--gamma", type=float, default=0.01,
                     help="entropy_bounded sampler: entropy budget in nats")
    dlm.add_argument("--gen-length", type=int, default=256, help="answer length in tokens")
    dlm.add_argument("--block-length", type=int, default=32,
                     help="semi-autoregressive block length (= gen-length: one block)")
    dlm.add_argument("--steps", type=int, default=None,
                     help="denoising steps for the fixed-schedule samplers (default: gen-length, "
                          "one token per step)")
    dlm.add_argument("--cache", default="none", choices=CACHES,
                     help="KV cache: prefix (Fast-dLLM) or dual (prefix + suffix)")
    dlm.add_argument("--logits-eos-inf", action="store_true",
                     help="never propose end-of-text (LLaDA's evaluation option)")
    dlm.add_argument("--confidence-eos-inf", action="store_true",
                     help="commit end-of-text proposals last (LLaDA's evaluation option)")
    dlm.add_argument("--no-early-stop", action="store_true",
                     help="decode every block even after the answer has ended")
    dlm.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                     help="native models on a GPU: capture the repeated diffusion step in a "
                     "CUDA graph once per batch and replay it (same samples, faster; on by "
                     "default; docs/benchmarks.md)")

    model = parser.add_argument_group("model loading")
    model.add_argument("--backend", default="auto", choices=("auto", "native", "hf", "vllm"))
    model.add_argument("--kind", default=None, choices=("ar", "dlm"),
                       help="treat a Hugging Face model as AR or DLM (default: detected)")
    model.add_argument("--convention", default="auto", choices=("auto", "llada", "dream"),
                       help="DLM logits convention: llada (aligned) or dream (shifted by one)")
    model.add_argument("--mask-id", type=int, default=None,
                       help="mask token id when the model's config does not name one")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")
    model.add_argument("--dtype", default=None,
                       choices=("auto", "float32", "bfloat16", "float16", "float64"),
                       help="default: bfloat16 on GPU, float32 on CPU")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="allow a Hugging Face model's own code (LLaDA, Dream)")


def run(args: argparse.Namespace) -> int:
    from codediff.generate import GenerateConfig, meta_path, run_generate

    cfg = GenerateConfig(
        model=args.model, task=args.task, out=args.out, prompt_format=args.prompt_format,
        data=args.data, n=args.n, limit=args.limit, task_ids=args.task_ids,
        batch_size=args.batch_size, seed=args.seed, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        kv_cache=not args.no_kv_cache, token_healing=not args.no_token_healing,
        sampler=args.sampler, tau=args.tau, factor=args.factor,
        gamma=args.gamma, gen_length=args.gen_length, block_length=args.block_length,
        steps=args.steps, cache=args.cache, logits_eos_inf=args.logits_eos_inf,
        confidence_eos_inf=args.confidence_eos_inf, early_stop=not args.no_early_stop,
        cuda_graphs=args.cuda_graphs,
        backend=args.backend, kind=args.kind, convention=args.convention, mask_id=args.mask_id,
        device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite, progress=not args.no_progress)
    out = run_generate(cfg)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {out} and {meta_path(out)}")
    return 0

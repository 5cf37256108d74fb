"""Tiny random-weight LLaDA / Dream folders built with the reference model code, and the
parity runs (codediff vs the reference generate functions) that tests/test_parity_ref.py checks.

The reference code is read in place from the shared reference folder (`CODEDIFF_REF`, else
`../shared/ref` beside the checkout); it is never copied into the repository. A model folder
is what a user downloads: config.json with its `auto_map`, the modelling files (copied from the
reference folder into the temporary model folder, as the hub ships them), safetensors weights
and a tokenizer.

Each family runs in its own process (`python -m tests.parity_ref llada|dream FOLDER`): the
modelling code registers its config with transformers for the whole process, and a second
copy of it would then shadow the folder's own classes. The run prints one JSON object
{case name: {"ref": ids, "ours": ids}}.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VOCAB = 96
EOS, MASK, PAD = 0, 1, 2
PROMPTS = [[5, 17, 42, 8, 33, 60, 21], [9, 70, 12]]
# seeds of the runs that draw random numbers (LLaDA `random`, Dream `origin`): the reference after
# torch.manual_seed(seed), codediff with --reference-rng (its generator seeded with the seed)
SEEDS = [11, 29]
ORIGIN_STEPS = (16, 8, 5)


def ref_dir() -> Path | None:
    """The reference folder, or None when it is absent."""
    env = os.environ.get("CODEDIFF_REF")
    path = Path(env) if env else REPO.parent / "shared" / "ref"
    return path if (path / "NVlabs" / "Fast-dLLM").is_dir() else None


def _tokenizer(folder: Path) -> None:
    """A word-level tokenizer over the tiny vocabulary (w3 .. w95 plus three specials)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": EOS, "<|mask|>": MASK, "<|pad|>": PAD}
    vocab.update({f"w{i}": i for i in range(3, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|pad|>", mask_token="<|mask|>", unk_token="w3")
    fast.save_pretrained(folder)


def _peak(head, special_rows: tuple[int, ...]) -> None:
    """Draw the output head so argmax is stable and confidences spread over (0, 1); the
    special tokens' rows are zeroed (logit 0, far below the top logits), so neither the mask
    nor end-of-text is proposed and the references' softmax over them changes nothing."""
    import torch

    with torch.no_grad():
        head.weight.normal_(0.0, 0.5)  # logits ~ N(0, 4): top-2 gaps of a few units
        for r in special_rows:
            head.weight[r].zero_()


def build_llada(folder: Path) -> Path:
    """A 2-layer LLaDA (block_type llama, RoPE, RMSNorm, SwiGLU, untied head), float32."""
    import torch
    from safetensors.torch import save_file

    src = ref_dir() / "NVlabs" / "Fast-dLLM" / "llada" / "model"
    sys.path.insert(0, str(src.parent))  # its package is `model` (relative imports)
    try:
        from model import configuration_llada as cfg_mod  # noqa: PLC0415
        from model import modeling_llada as mdl_mod  # noqa: PLC0415
    finally:
        sys.path.remove(str(src.parent))
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = cfg_mod.LLaDAConfig(
        d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128,
        mlp_ratio=2, block_type="llama", activation_type="silu", rope=True,
        layer_norm_type="rms", rms_norm_eps=1e-5, attention_dropout=0.0,
        residual_dropout=0.0, embedding_dropout=0.0, max_sequence_length=256,
        vocab_size=VOCAB, embedding_size=VOCAB, weight_tying=False, include_bias=False,
        include_qkv_bias=False, eos_token_id=EOS, pad_token_id=PAD, mask_token_id=MASK,
        init_device="cpu", init_fn="normal", init_std=0.5, flash_attention=False,
        auto_map={"AutoConfig": "configuration_llada.LLaDAConfig",
                  "AutoModel": "modeling_llada.LLaDAModelLM"})
    model = mdl_mod.LLaDAModel(mdl_mod.create_model_config_from_pretrained_config(config),
                               init_params=False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5 if p.dim() > 1 else 0.0).add_(1.0 if p.dim() == 1 else 0.0)
    _peak(model.transformer.ff_out, (EOS, MASK, PAD))
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    d = config.to_dict()
    d["architectures"] = ["LLaDAModelLM"]
    (folder / "config.json").write_text(json.dumps(d, indent=1, default=str))
    for f in ("configuration_llada.py", "modeling_llada.py"):
        shutil.copy(src / f, folder / f)
    _tokenizer(folder)
    return folder


def build_dream(folder: Path) -> Path:
    """A 2-layer Dream (Qwen2-shaped, q/k/v biases, untied lm_head), float32."""
    import torch
    from safetensors.torch import save_file

    src = ref_dir() / "NVlabs" / "Fast-dLLM" / "dream" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    for f in ("configuration_dream.py", "modeling_dream.py", "generation_utils.py"):
        shutil.copy(src / f, folder / f)
    heads, dim = 4, 64
    config = {
        "architectures": ["DreamModel"], "model_type": "Dream",
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                     "AutoModel": "modeling_dream.DreamModel"},
        "vocab_size": VOCAB, "hidden_size": dim, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": heads, "num_key_value_heads": 2,
        "hidden_act": "silu", "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "attention_dropout": 0.0,
        "mask_token_id": MASK, "pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": EOS,
        "torch_dtype": "float32", "use_cache": False,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / "generation_config.json").write_text(json.dumps({
        "mask_token_id": MASK, "pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": EOS,
        "alg": "origin", "eps": 1e-3, "steps": 16, "temperature": 0.0}))
    # weights: named and shaped as Qwen2 / Dream name them, drawn here
    g = torch.Generator().manual_seed(1)
    kv = dim // heads * 2
    w: dict[str, torch.Tensor] = {}

    def rnd(*shape: int, std: float = 0.5) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    w["model.embed_tokens.weight"] = rnd(VOCAB, dim, std=1.0)
    for i in range(2):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rnd(dim, dim)
        w[p + "self_attn.q_proj.bias"] = rnd(dim, std=0.1)
        w[p + "self_attn.k_proj.weight"] = rnd(kv, dim)
        w[p + "self_attn.k_proj.bias"] = rnd(kv, std=0.1)
        w[p + "self_attn.v_proj.weight"] = rnd(kv, dim)
        w[p + "self_attn.v_proj.bias"] = rnd(kv, std=0.1)
        w[p + "self_attn.o_proj.weight"] = rnd(dim, dim, std=0.2)
        w[p + "mlp.gate_proj.weight"] = rnd(128, dim, std=0.2)
        w[p + "mlp.up_proj.weight"] = rnd(128, dim, std=0.2)
        w[p + "mlp.down_proj.weight"] = rnd(dim, 128, std=0.2)
        w[p + "input_layernorm.weight"] = torch.ones(dim)
        w[p + "post_attention_layernorm.weight"] = torch.ones(dim)
    w["model.norm.weight"] = torch.ones(dim)
    head = rnd(VOCAB, dim, std=0.5)
    for r in (EOS, MASK, PAD):
        head[r] = 0.0
    w["lm_head.weight"] = head
    save_file(w, str(folder / "model.safetensors"))
    _tokenizer(folder)
    return folder


# ----------------------------------------------------------------------------- parity runs

def _ours_batch(backend, prompts: list[list[int]], seeds: list[int], **kw) -> list[list[int]]:
    """codediff's answer ids (greedy, no token healing, no early stop: the references have
    neither), through the same path as `codediff generate`; row b's generator seeded with
    seeds[b] (as `--reference-rng` seeds it with --seed)."""
    import torch

    from codediff.sampling.dlm import DLMSettings, generate_dlm
    from codediff.sampling.rules import CommitRule

    rule_kw = {k: kw.pop(k) for k in ("tau", "factor", "factor_rule") if k in kw}
    rule = CommitRule(kw.pop("sampler"), **rule_kw)
    settings = DLMSettings(rule=rule, early_stop=False, temperature=0.0, **kw)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return [o.ids for o in generate_dlm(backend, prompts, settings, (), gens, heal=False)]


def _ours(backend, prompt: list[int], seed: int = 0, **kw) -> list[int]:
    return _ours_batch(backend, [prompt], [seed], **kw)[0]


def _seeded(seed: int, fn):
    """fn() after torch.manual_seed(seed): the references draw from the global generator."""
    import torch

    def run():
        torch.manual_seed(seed)
        return fn()
    return run


def _upto_eos(ids: list[int]) -> list[int]:
    return ids[:ids.index(EOS)] if EOS in ids else ids


def _load_file(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_llada(folder: Path) -> dict:
    import types

    import torch

    from codediff.backends import load_backend

    backend = load_backend(folder, backend="hf", trust_remote_code=True, device="cpu",
                           dtype="float32")
    model = backend.model
    # Fast-dLLM's generate.py imports `model.modeling_llada`: hand it the folder's module (the
    # one the model was built from) rather than importing a second copy
    pkg = types.ModuleType("model")
    pkg.modeling_llada = sys.modules[type(model).__module__]
    sys.modules.setdefault("model", pkg)
    sys.modules.setdefault("model.modeling_llada", pkg.modeling_llada)
    root = ref_dir()
    llada = _load_file("ref_llada_generate", root / "ML-GSAI" / "LLaDA" / "generate.py")
    fast = _load_file("ref_fastdllm_generate", root / "NVlabs" / "Fast-dLLM" / "llada" /
                      "generate.py")
    out: dict = {"pads": backend.pads, "dlm_cache": backend.dlm_cache}
    for p_i, prompt in enumerate(PROMPTS):
        x = torch.tensor([prompt])
        P = len(prompt)
        seed = SEEDS[p_i]
        cases = {
            # ML-GSAI LLaDA generate: low_confidence, semi-AR blocks, steps = gen and fewer
            "llada_lowconf_steps_eq_gen": (
                lambda x=x: llada.generate(model, x, steps=16, gen_length=16, block_length=8,
                                       mask_id=MASK),
                dict(sampler="low_confidence", gen_length=16, block_length=8, steps=16)),
            "llada_lowconf_fewer_steps_uneven": (
                lambda x=x: llada.generate(model, x, steps=6, gen_length=16, block_length=8,
                                       mask_id=MASK),
                dict(sampler="low_confidence", gen_length=16, block_length=8, steps=6)),
        }
        # ML-GSAI LLaDA generate, remasking='random': torch.rand over the whole sequence at
        # every step, reproduced by --reference-rng; 24 steps > 16 masks: the last steps of a
        # block commit nothing but still draw
        for name, steps in (("steps_eq_gen", 16), ("fewer_steps_uneven", 6), ("more_steps", 24)):
            cases[f"llada_random_{name}"] = (
                _seeded(seed, lambda x=x, steps=steps: llada.generate(
                    model, x, steps=steps, gen_length=16, block_length=8, mask_id=MASK,
                    remasking="random")),
                dict(sampler="random", gen_length=16, block_length=8, steps=steps,
                     reference_rng=True, seed=seed))
        for cache, fn in (("none", fast.generate), ("prefix", fast.generate_with_prefix_cache),
                          ("dual", fast.generate_with_dual_cache)):
            cases[f"fastdllm_threshold_{cache}"] = (
                lambda fn=fn, x=x: fn(model, x, steps=16, gen_length=16, block_length=8,
                                 mask_id=MASK, threshold=0.7)[0],
                dict(sampler="threshold", tau=0.7, gen_length=16, block_length=8, cache=cache))
            cases[f"fastdllm_factor_{cache}"] = (
                lambda fn=fn, x=x: fn(model, x, steps=16, gen_length=16, block_length=8,
                                 mask_id=MASK, factor=1.0)[0],
                dict(sampler="factor", factor=1.0, factor_rule="fastdllm", gen_length=16,
                     block_length=8, cache=cache))
        for name, (ref_fn, kw) in cases.items():
            ref = _upto_eos(ref_fn()[0, P:].tolist())
            out[f"{name}/p{p_i}"] = {"ref": ref, "ours": _ours(backend, prompt, **kw)}
    return out


def run_dream(folder: Path) -> dict:
    import contextlib
    import io

    import torch

    from codediff.backends import load_backend

    backend = load_backend(folder, backend="hf", trust_remote_code=True, device="cpu",
                           dtype="float32")
    model = backend.model
    ours_of = {"maskgit_plus": "low_confidence", "topk_margin": "margin", "entropy": "entropy"}
    out: dict = {"pads": backend.pads, "dlm_cache": backend.dlm_cache}

    def ref_run(prompt: list[int], alg: str, steps: int) -> list[int]:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "used steps"
            seq = model.diffusion_generate(
                torch.tensor([prompt]), generation_config=model.generation_config,
                max_new_tokens=16, steps=steps, alg=alg, temperature=0.0, eps=1e-3)
        return _upto_eos(seq[0, len(prompt):].tolist())

    for p_i, prompt in enumerate(PROMPTS):
        for alg, sampler in ours_of.items():
            for steps in (16, 8, 5):
                ours = _ours(backend, prompt, sampler=sampler, gen_length=16, block_length=16,
                             steps=steps, schedule="dream")
                out[f"dream_{alg}_steps{steps}/p{p_i}"] = {
                    "ref": ref_run(prompt, alg, steps), "ours": ours}
    # `origin`: each mask committed with probability 1 - s/t, drawn by torch.rand over the
    # masked positions after torch.manual_seed(seed); codediff with --reference-rng. Batched
    # (both prompts, left-padded), each row must still equal the reference run on it alone.
    for steps in ORIGIN_STEPS:
        refs = []
        for p_i, prompt in enumerate(PROMPTS):
            torch.manual_seed(SEEDS[p_i])
            refs.append(ref_run(prompt, "origin", steps))
        kw = dict(sampler="origin", gen_length=16, block_length=16, steps=steps,
                  reference_rng=True)
        batch = _ours_batch(backend, PROMPTS, SEEDS, **kw)
        for p_i, prompt in enumerate(PROMPTS):
            ours = _ours(backend, prompt, seed=SEEDS[p_i], **kw)
            out[f"dream_origin_steps{steps}/p{p_i}"] = {"ref": refs[p_i], "ours": ours}
            out[f"dream_origin_batched_steps{steps}/p{p_i}"] = {"ref": refs[p_i],
                                                                "ours": batch[p_i]}
    return out


if __name__ == "__main__":  # python -m tests.parity_ref build-llada|build-dream|llada|dream DIR
    what, where = sys.argv[1], Path(sys.argv[2])
    if what.startswith("build-"):
        {"build-llada": build_llada, "build-dream": build_dream}[what](where)
        print("ok")
    else:
        result = {"llada": run_llada, "dream": run_dream}[what](where)
        print("PARITY " + json.dumps(result))

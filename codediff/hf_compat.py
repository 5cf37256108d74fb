"""Loading LLaDA / Dream remote code (written for transformers 4.4x) under transformers 5.

The published model folders ship their own modelling code (`auto_map` + `trust_remote_code`).
With transformers 5 that code fails in known ways; codediff works around each one in memory, on
the classes transformers imported from the folder, never by editing the user's folder:

LLaDA (`LLaDAModelLM`)
  - its `__init__` never calls `post_init()`, so `from_pretrained` dies on the missing
    `all_tied_weights_keys`: the patched `__init__` ends with `post_init()`;
  - its `tie_weights()` takes no arguments, transformers 5 passes `recompute_mapping=`: the
    patched one accepts and ignores them (LLaDA ties only when `weight_tying`, which it handles
    itself), and `_init_weights` does nothing (the weights come from the checkpoint);
  - transformers 5 drops `use_cache` from model configs, which `forward` reads: set to False.
Dream (`DreamModel`)
  - `ROPE_INIT_FUNCTIONS["default"]` is gone: the plain RoPE inverse frequencies are registered
    under that name when missing;
  - `DreamGenerationConfig.validate(is_init=False)` rejects the arguments transformers 5 passes:
    the patched one accepts any;
  - the non-persistent rotary `inv_freq` buffers are left uninitialised (the model is built on
    the meta device and Dream's `_init_weights` does not know its rotary module): every position
    would get the same garbage rotation and the model would ignore word order. After loading,
    the buffers are recomputed from the config and checked.

`prepare(config, ckpt)` patches the classes before `from_pretrained`; `finish(model)` fixes
the loaded model. Where the model still cannot be used, `UserError` says so in one line.
"""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path
from typing import Any

import torch

from codediff.errors import UserError

_PATCHED = "_codediff_compat"


def remote_class(config: Any, ckpt: Path, auto_name: str = "AutoModel") -> type | None:
    """The class the folder's `auto_map` names for `auto_name`, imported the way transformers
    imports it (None when the folder has no such entry)."""
    ref = (getattr(config, "auto_map", None) or {}).get(auto_name)
    if not ref:
        return None
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    return get_class_from_dynamic_module(ref, str(ckpt))


def prepare(config: Any, ckpt: Path) -> None:
    """Patch the folder's remote classes (LLaDA, Dream) so transformers 5 can load them."""
    model_type = str(getattr(config, "model_type", "")).lower()
    if not getattr(config, "auto_map", None):
        return
    try:
        cls = remote_class(config, ckpt)
    except Exception as e:  # noqa: BLE001 - the import error of the folder's own code
        raise UserError(f"{ckpt}: the model's own code does not import under transformers "
                        f"{_tf_version()}: {type(e).__name__}: {e}") from e
    if cls is None:
        return
    if "llada" in model_type:
        _patch_llada(cls)
    elif "dream" in model_type:
        _patch_dream(cls)


def finish(model: Any) -> Any:
    """After `from_pretrained`: the per-model fixes (config defaults, rotary buffers)."""
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", "")).lower()
    if "llada" in model_type and config is not None:
        if not hasattr(config, "use_cache"):
            config.use_cache = False
    if "dream" in model_type:
        _fix_dream_rope(model)
    return model


# ----------------------------------------------------------------------------- LLaDA

def _patch_llada(cls: type) -> None:
    if getattr(cls, _PATCHED, False):
        return
    init = cls.__init__
    tie = cls.tie_weights

    @functools.wraps(init)
    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        init(self, config, *args, **kwargs)
        if not hasattr(self, "all_tied_weights_keys"):
            self.post_init()

    def tie_weights(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return tie(self, *args, **kwargs)
        except TypeError:
            return tie(self)

    def _init_weights(self: Any, module: Any) -> None:
        """Nothing: every weight comes from the checkpoint."""

    cls.__init__ = __init__
    cls.tie_weights = tie_weights
    cls._init_weights = _init_weights
    setattr(cls, _PATCHED, True)


# ----------------------------------------------------------------------------- Dream

def _default_rope(config: Any, device: Any = None, seq_len: int | None = None,
                  **kwargs: Any) -> tuple[torch.Tensor, float]:
    """Plain RoPE inverse frequencies (what transformers 4's "default" entry computed)."""
    if config is not None:
        base = float(getattr(config, "rope_theta", None)
                     or (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 1e4))
        heads = int(config.num_attention_heads)
        dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        dim = int(dim * float(getattr(config, "partial_rotary_factor", 1.0)))
    else:
        base, dim = float(kwargs["base"]), int(kwargs["dim"])
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(
        device=device, dtype=torch.float) / dim))
    return inv, 1.0


def _patch_dream(cls: type) -> None:
    from transformers import modeling_rope_utils

    if "default" not in modeling_rope_utils.ROPE_INIT_FUNCTIONS:
        modeling_rope_utils.ROPE_INIT_FUNCTIONS["default"] = _default_rope
    if getattr(cls, _PATCHED, False):
        return
    # the generation config class lives beside the model (generation_utils.py of the folder)
    pkg = cls.__module__.rsplit(".", 1)[0]
    for name in list(sys.modules):
        if not name.startswith(pkg + "."):
            continue
        gen_cfg = getattr(sys.modules[name], "DreamGenerationConfig", None)
        if gen_cfg is not None and not getattr(gen_cfg, _PATCHED, False):
            def validate(self: Any, *args: Any, **kwargs: Any) -> None:
                """Dream's own validate checks nothing; accept transformers 5's arguments."""

            gen_cfg.validate = validate
            setattr(gen_cfg, _PATCHED, True)
    setattr(cls, _PATCHED, True)


def _fix_dream_rope(model: Any) -> None:
    """Recompute every rotary `inv_freq` from the config and check it (see the module doc)."""
    reset = getattr(model, "reset_rope_parameters", None)
    rotaries = [m for m in model.modules() if hasattr(m, "inv_freq")]
    if reset is not None:
        reset()
    else:
        for m in rotaries:
            fn = getattr(m, "reset_parameters", None)
            if fn is not None:
                fn()
    config = model.config
    for m in rotaries:
        inv = m.inv_freq
        want, _ = _default_rope(config, device=inv.device)
        rope_type = (getattr(config, "rope_scaling", None) or {}).get("rope_type", "default")
        if not torch.isfinite(inv).all() or (
                rope_type == "default" and (inv.shape != want.shape
                                            or not torch.allclose(inv.float(), want, rtol=1e-4))):
            raise UserError("the Dream model's rotary frequencies (inv_freq) are not initialised "
                            f"after loading under transformers {_tf_version()}; it would ignore "
                            "word order: load it with a transformers 4.4x environment")
        if hasattr(m, "original_inv_freq"):
            m.original_inv_freq = m.inv_freq


def _tf_version() -> str:
    try:
        return importlib.import_module("transformers").__version__
    except ModuleNotFoundError:
        return "?"

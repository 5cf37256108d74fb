"""Model backends for generation: one small interface over our checkpoints and external models.

A backend gives the samplers what they need and nothing else: the interface is
`codediff.sampling.common.SamplingBackend` (a Protocol), which `Backend` implements:

- `tokenizer`: `encode(text) -> ids` and `decode(ids) -> text`;
- `forward(idx, attention_mask=, position_ids=, start_pos=, cache=, update_cache=,
  logits_range=, logits_at=)` -> logits [B, S, V] where logits[:, i] predicts token i for a DLM
  (the Dream shift is undone here) and token i + 1 for an AR model;
- `new_cache(batch, capacity)` and `select_rows(cache, rows)` where the backend has a KV cache
  (the DLM prefix / dual caches also need `dlm_cache`: a cache rewritten in place);
- the special ids (`eos_ids`, `pad_id`, `mask_id`) and a FLOPs model for cost estimates;
- `slices_head` and `graphable`, what the cost model and the CUDA graphs rely on.

A backend with its own sampling loop (vLLM) says so with `samples_itself` and implements
`generate_texts` instead; `codediff generate` then hands it the prompt text.

Backends:
  native   a codediff checkpoint (`codediff train` output), `ar` or `mdm`
  hf       a Hugging Face folder: AutoModelForCausalLM (AR), or a DLM in the LLaDA convention
           (mask id from the config, logits aligned with positions, `trust_remote_code`) or the
           Dream convention (shifted logits: position i predicts token i + 1)
  vllm     AR through vLLM when it is installed (optional; it samples by itself)
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from codediff.errors import UserError

CONVENTIONS = ("auto", "llada", "dream")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


# ----------------------------------------------------------------------------- cost model

@dataclass(frozen=True)
class FlopsModel:
    """Forward-pass FLOPs: 2 x (matmul params) per token plus the attention score/value products.

    `body_params` excludes the token embedding (a lookup) and the output head, which is counted
    as `d_model * vocab` so tied and untied heads cost the same.
    """

    body_params: int
    n_layer: int
    d_model: int
    vocab_size: int

    def forward(self, n_query: int, n_key: int, n_logits: float | None = None) -> float:
        """FLOPs of one forward for one sequence: n_query fresh tokens attending n_key keys,
        the output head run on n_logits of them (default: all)."""
        n_logits = n_query if n_logits is None else n_logits
        matmul = 2.0 * (n_query * self.body_params + n_logits * self.d_model * self.vocab_size)
        attention = 4.0 * self.n_layer * self.d_model * n_query * n_key
        return matmul + attention

    @classmethod
    def of(cls, model: nn.Module, n_layer: int, d_model: int, vocab_size: int) -> FlopsModel:
        total = sum(p.numel() for p in model.parameters())
        skip = 0
        seen: set[int] = set()
        for m in model.modules():
            is_emb = isinstance(m, nn.Embedding)
            is_head = isinstance(m, nn.Linear) and m.out_features == vocab_size
            if (is_emb or is_head) and id(m.weight) not in seen:
                seen.add(id(m.weight))
                skip += m.weight.numel()
        return cls(body_params=max(total - skip, 0), n_layer=n_layer, d_model=d_model,
                   vocab_size=vocab_size)


# ----------------------------------------------------------------------------- tokenizers

class NativeTokenizer:
    """A `tokenizers.Tokenizer` (our corpus tokenizer): no BOS, special tokens dropped on decode."""

    def __init__(self, tok: Any):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()


class HFTokenizer:
    """A transformers tokenizer; adds the model's BOS (if it has one) like its own generate."""

    def __init__(self, tok: Any, add_special_tokens: bool = True):
        self.tok = tok
        self.add_special_tokens = add_special_tokens

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=self.add_special_tokens))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def vocab_size(self) -> int:
        return len(self.tok)


# ----------------------------------------------------------------------------- backends

class Backend:
    """Common fields; subclasses implement `forward` (and `new_cache` / `select_rows` when
    cached). Implements codediff.sampling.common.SamplingBackend."""

    name = "base"
    kind = "ar"              # "ar" | "dlm"
    convention = "native"    # "native" | "llada" | "dream" | "causal"
    # its cache can be rewritten in place at any position (what the DLM prefix / dual caches
    # do at every step); an append-only cache (transformers' DynamicCache) cannot
    dlm_cache = False
    # the output head runs only on the positions asked for (else on every position, then
    # sliced): the FLOPs estimate counts the head accordingly
    slices_head = False
    # its forward can be captured in a CUDA graph (no host syncs inside), and takes a device
    # tensor for `start_pos` (cached steps) and `logits_at` for the positions to score
    graphable = False
    # it runs its own sampling loop on the prompt text (`generate_texts`; vLLM): the codediff
    # samplers and `forward` are not used
    samples_itself = False
    model: nn.Module | None = None  # the torch module, where the backend runs one

    def __init__(self, *, tokenizer: Any, eos_ids: list[int], pad_id: int, mask_id: int | None,
                 device: torch.device, flops: FlopsModel | None, max_seq_len: int | None,
                 path: str, dtype: torch.dtype | None):
        self.tokenizer = tokenizer
        self.eos_ids = sorted({int(i) for i in eos_ids})
        self.pad_id = int(pad_id)
        self.mask_id = None if mask_id is None else int(mask_id)
        self.device = device
        self.flops = flops
        self.max_seq_len = max_seq_len
        self.path = path
        self.dtype = dtype

    def forward(self, idx: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, start_pos: int | torch.Tensor = 0,
                cache: Any = None, update_cache: bool = False,
                logits_range: tuple[int, int] | None = None,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """Float logits [B, S, V]; with `logits_range` (a, b) only input positions a..b-1,
        with `logits_at` (a device tensor) only those positions. Backends that cannot skip the
        other positions compute them and slice. `start_pos` is a 0-dim device tensor only on a
        `graphable` backend."""
        raise NotImplementedError

    def new_cache(self, batch: int, capacity: int) -> Any:
        raise UserError(f"the {self.name} backend has no KV cache; use --cache none")

    def select_rows(self, cache: Any, rows: torch.Tensor) -> Any:
        """The cache of a batch reduced to `rows` (batch positions), for dropping finished
        rows from AR decoding (every backend with a cache has it)."""
        raise NotImplementedError

    def generate_texts(self, prompts: list[str], *, n: int, temperature: float, top_p: float,
                       top_k: int, max_new_tokens: int, stop: list[str], seed: int
                       ) -> list[list[dict[str, Any]]]:
        """A backend that `samples_itself`: for each prompt, n samples {"text", "tokens",
        "finish_reason"} (stop sequences already cut)."""
        raise NotImplementedError

    def num_params(self) -> int | None:
        """All parameters, embeddings and output head included (what run.json's `params`
        counts); None where the weights are out of reach (vLLM)."""
        if self.model is None:
            return None
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "backend": self.name, "kind": self.kind,
                "convention": self.convention, "mask_id": self.mask_id, "eos_ids": self.eos_ids,
                "pad_id": self.pad_id, "dtype": str(self.dtype).replace("torch.", ""),
                "device": str(self.device),
                "params": None if self.flops is None else self.flops.body_params}


class NativeBackend(Backend):
    """A codediff checkpoint; `mdm` checkpoints are DLMs in the LLaDA convention (no shift)."""

    name = "native"
    dlm_cache = True
    slices_head = True
    graphable = True

    def __init__(self, model: nn.Module, meta: dict, **kw: Any):
        super().__init__(**kw)
        self.model = model
        self.meta = meta
        self.kind = "dlm" if meta.get("objective") == "mdm" else "ar"
        self.convention = "native"

    @torch.no_grad()
    def forward(self, idx, *, attention_mask=None, position_ids=None, start_pos=0, cache=None,
                update_cache=False, logits_range=None, logits_at=None):
        # graphable: `start_pos` may be a 0-dim device tensor and `logits_at` a device tensor of
        # positions (model.Transformer.forward), so one CUDA graph serves every block
        weights = next(self.model.parameters()).dtype
        with forward_context(self.device, self.dtype if weights == torch.float32 else None):
            out = self.model(idx, attention_mask=attention_mask, position_ids=position_ids,
                             start_pos=start_pos, cache=cache, update_cache=update_cache,
                             logits_range=logits_range, logits_at=logits_at)
        return _upcast(out)

    def new_cache(self, batch: int, capacity: int) -> Any:
        from codediff.model import KVCache

        dtype = next(self.model.parameters()).dtype
        return KVCache.empty(self.model, batch, capacity, device=self.device, dtype=dtype)

    def select_rows(self, cache: Any, rows: torch.Tensor) -> Any:
        for i in range(len(cache.k)):  # layer by layer: never two whole caches at once
            cache.k[i] = cache.k[i][rows]
            cache.v[i] = cache.v[i][rows]
        return cache

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["objective"] = self.meta.get("objective")
        for key in ("tokens", "epochs", "epoch_tokens", "unique_tokens"):
            if key in self.meta:
                d[key] = self.meta[key]
        return d


class HFCausalBackend(Backend):
    """Any `AutoModelForCausalLM`; KV cache through transformers' DynamicCache."""

    name = "hf"
    kind = "ar"
    convention = "causal"

    def __init__(self, model: nn.Module, **kw: Any):
        super().__init__(**kw)
        self.model = model
        # transformers' `logits_to_keep`: the head runs on the last positions only (a 150K
        # vocabulary over a whole batch of prompts is gigabytes of float32 logits otherwise)
        self._keeps = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.slices_head = self._keeps  # for the suffix ranges AR decoding asks for

    @torch.no_grad()
    def forward(self, idx, *, attention_mask=None, position_ids=None, start_pos=0, cache=None,
                update_cache=False, logits_range=None, logits_at=None):
        if cache is not None and not update_cache:
            raise ValueError("the hf backend only appends to its cache (AR decoding)")
        if logits_at is not None:
            return _at(self.forward(idx, attention_mask=attention_mask,
                                    position_ids=position_ids, cache=cache,
                                    update_cache=update_cache), logits_at)
        mask = None if attention_mask is None else attention_mask.to(torch.long)
        kwargs: dict[str, Any] = {}
        S = idx.shape[1]
        a, b = logits_range if logits_range is not None else (0, S)
        if self._keeps and b == S and a > 0:
            kwargs["logits_to_keep"] = S - a
            a, b = 0, S - a
        with forward_context(self.device, None):
            out = self.model(input_ids=idx, attention_mask=mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=cache is not None, **kwargs)
        return _upcast(out.logits[:, a:b])  # a view when (a, b) covers everything

    def new_cache(self, batch: int, capacity: int) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def select_rows(self, cache: Any, rows: torch.Tensor) -> Any:
        # reorder_cache also handles the conv / recurrent states of hybrid models, which
        # batch_select_indices does not
        cache.reorder_cache(rows)
        return cache


class RemoteDLMCache:
    """The KV cache of a remote LLaDA model with Fast-dLLM's cache arguments: the per-layer
    (keys, values) its forward returns with `use_cache=True` (keys before RoPE), reused the way
    Fast-dLLM's generate functions reuse them. `keep` is set by `truncate` (prefix cache: the
    steps read the first `keep` positions and recompute the rest); None means the whole
    sequence is cached and a step rewrites its own positions in place (`replace_position`,
    the dual cache)."""

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.length = 0
        self.keep: int | None = None

    def truncate(self, n: int) -> None:
        self.keep = n


class HFDiffusionBackend(Backend):
    """An external DLM: LLaDA convention (logits aligned) or Dream (position i predicts i + 1).

    KV cache: where the remote code takes Fast-dLLM's cache arguments (`past_key_values`,
    `use_cache`, `replace_position`: Fast-dLLM's LLaDA code), the prefix and dual caches drive
    them (RemoteDLMCache); other remote DLMs run without a cache.

    Padding: some remote code ignores the attention mask (Fast-dLLM's and the hub's LLaDA call
    SDPA without it; Dream numbers positions 0..L-1 whatever it is given). `pads` says whether
    left padding leaves the real positions' logits unchanged, probed once on a tiny input;
    generation batches a model that does not pad by prompt length instead.
    """

    name = "hf"
    kind = "dlm"

    def __init__(self, model: nn.Module, convention: str, **kw: Any):
        super().__init__(**kw)
        self.model = model
        self.convention = convention
        params = inspect.signature(model.forward).parameters
        # LLaDA's remote code has no position_ids (it numbers positions 0..L-1); Dream does
        self._takes_positions = "position_ids" in params
        self.dlm_cache = (convention == "llada" and "past_key_values" in params
                          and "replace_position" in params)
        self._pads: bool | None = None

    @property
    def pads(self) -> bool:
        """Whether a left-padded row gives the same logits as the row alone (probed once)."""
        if self._pads is None:
            real = torch.tensor([[7, 11, 5, 9]], device=self.device) % max(
                int(getattr(self.model.config, "vocab_size", 16) or 16), 16)
            real[real == self.mask_id] = 3
            padded = torch.cat([torch.full((1, 2), self.pad_id, device=self.device), real], 1)
            mask = torch.tensor([[False, False, True, True, True, True]], device=self.device)
            pos = (mask.long().cumsum(1) - 1).clamp(min=0)
            # from the second real position: a Dream-convention position reads the one before
            alone = self.forward(real)[:, 1:]
            with_pad = self.forward(padded, attention_mask=mask, position_ids=pos)[:, 3:]
            scale = alone.abs().max().item() + 1.0
            self._pads = bool((alone - with_pad).abs().max().item() <= 1e-3 * scale)
        return self._pads

    def new_cache(self, batch: int, capacity: int) -> Any:
        if not self.dlm_cache:
            return super().new_cache(batch, capacity)
        return RemoteDLMCache()

    @torch.no_grad()
    def _cached_forward(self, idx: torch.Tensor, start_pos: int, cache: RemoteDLMCache
                        ) -> torch.Tensor:
        """Fast-dLLM's three cached forwards: a block start (the whole sequence, fills the
        cache), a prefix-cache step (reads the first `keep` positions), a dual-cache step
        (the block only; its keys/values replace the cached ones in place)."""
        with forward_context(self.device, self.dtype):
            if start_pos == 0:
                out = self.model(idx, use_cache=True)
                cache.layers = [tuple(kv) for kv in out.past_key_values]
                cache.keep = None
            elif cache.keep is not None:
                past = [(k[:, :, :cache.keep], v[:, :, :cache.keep]) for k, v in cache.layers]
                out = self.model(idx, past_key_values=past, use_cache=True)
            else:
                B, T = idx.shape
                total = cache.layers[0][0].shape[-2]
                replace = torch.zeros(B, total, dtype=torch.bool, device=idx.device)
                replace[:, int(start_pos):int(start_pos) + T] = True
                out = self.model(idx, past_key_values=cache.layers, use_cache=True,
                                 replace_position=replace)
        return out.logits

    @torch.no_grad()
    def forward(self, idx, *, attention_mask=None, position_ids=None, start_pos=0, cache=None,
                update_cache=False, logits_range=None, logits_at=None):
        if cache is not None:
            if not self.dlm_cache:
                raise UserError("this model's code takes no KV cache arguments (Fast-dLLM's "
                                "past_key_values / replace_position); use --cache none")
            if attention_mask is not None and not bool(attention_mask.all()):
                raise ValueError("the remote DLM cache takes unpadded rows only")
            logits = self._cached_forward(idx, int(start_pos), cache)
            if logits_at is not None:
                return _upcast(_at(logits, logits_at))
            a, b = logits_range if logits_range is not None else (0, logits.shape[1])
            return _upcast(logits[:, a:b])
        if logits_at is not None:
            return _at(self.forward(idx, attention_mask=attention_mask,
                                    position_ids=position_ids), logits_at)
        kwargs: dict[str, Any] = {}
        if attention_mask is not None and not bool(attention_mask.all()):
            if self.convention == "dream":
                # Dream passes its mask straight to SDPA: a [B, 1, N, N] bool pairwise mask
                kwargs["attention_mask"] = (attention_mask[:, None, :, None]
                                            & attention_mask[:, None, None, :])
            else:
                kwargs["attention_mask"] = attention_mask.to(torch.long)
            if position_ids is not None and self._takes_positions:
                kwargs["position_ids"] = position_ids
        with forward_context(self.device, self.dtype):
            out = self.model(idx, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        a, b = logits_range if logits_range is not None else (0, logits.shape[1])
        if self.convention == "dream":
            # position i's logits predict token i + 1: move them to i + 1 (position 0 is prompt)
            logits = _dream_shift(logits[:, max(a - 1, 0):b], a, b)
        else:
            logits = logits[:, a:b]
        return _upcast(logits)  # after the slice: only the kept positions become float32


class ShiftedView(Backend):
    """Any backend read through the Dream convention (logits moved one position right).

    Used to serve an AR model as a (left-to-right) DLM and in tests of the Dream shift.
    """

    name = "shifted"
    kind = "dlm"
    convention = "dream"

    def __init__(self, inner: Backend, mask_id: int):
        super().__init__(tokenizer=inner.tokenizer, eos_ids=inner.eos_ids, pad_id=inner.pad_id,
                         mask_id=mask_id, device=inner.device, flops=inner.flops,
                         max_seq_len=inner.max_seq_len, path=inner.path, dtype=inner.dtype)
        self.inner = inner
        self.slices_head = inner.slices_head

    def num_params(self) -> int | None:
        return self.inner.num_params()

    def forward(self, idx, *, attention_mask=None, position_ids=None, start_pos=0, cache=None,
                update_cache=False, logits_range=None, logits_at=None):
        if cache is not None:
            raise UserError("the Dream convention runs without a KV cache; use --cache none")
        if logits_at is not None:
            return _at(self.forward(idx, attention_mask=attention_mask,
                                    position_ids=position_ids), logits_at)
        a, b = logits_range if logits_range is not None else (0, idx.shape[1])
        logits = self.inner.forward(idx, attention_mask=attention_mask, position_ids=position_ids,
                                    logits_range=(max(a - 1, 0), b))
        return _dream_shift(logits, a, b)


class VLLMBackend(Backend):
    """AR generation through vLLM (optional extra). vLLM runs its own batched sampling loop."""

    name = "vllm"
    kind = "ar"
    convention = "causal"
    samples_itself = True

    def __init__(self, llm: Any, **kw: Any):
        super().__init__(**kw)
        self.llm = llm

    def generate_texts(self, prompts: list[str], *, n: int, temperature: float, top_p: float,
                       top_k: int, max_new_tokens: int, stop: list[str], seed: int
                       ) -> list[list[dict[str, Any]]]:
        """For each prompt, n samples {"text", "tokens", "finish_reason"} (stops already cut)."""
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=temperature, top_p=top_p,
                                top_k=top_k if top_k > 0 else -1, max_tokens=max_new_tokens,
                                stop=list(stop) or None, seed=seed)
        outs = self.llm.generate(prompts, params)
        return [[{"text": c.text, "tokens": len(c.token_ids),
                  "finish_reason": "stop" if c.finish_reason == "stop" else "length"}
                 for c in o.outputs] for o in outs]


# ----------------------------------------------------------------------------- loading

def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run dir -> its newest checkpoint; a checkpoint or HF folder -> itself."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"--model {path}: no such folder; pass a run dir, a checkpoint folder or "
                        "a Hugging Face model folder")
    if p.is_dir() and (p / "checkpoints").is_dir() and not (p / "config.json").exists():
        ckpts = [c for c in (p / "checkpoints").iterdir() if (c / "config.json").exists()]
        if not ckpts:
            raise UserError(f"--model {path}: run dir has no checkpoints yet; train first or "
                            "pass a checkpoint folder")

        def tokens(c: Path) -> int:
            m = re.search(r"(\d+)$", c.name)
            return int(m.group(1)) if m else -1

        return max(ckpts, key=tokens)
    if not (p / "config.json").exists():
        raise UserError(f"--model {path}: no config.json; pass a run dir, a checkpoint folder "
                        "or a Hugging Face model folder")
    return p


def is_native_checkpoint(path: Path) -> bool:
    try:
        with open(path / "config.json") as f:
            return "codediff" in json.load(f)
    except (OSError, json.JSONDecodeError):
        return False


def pick_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        local = os.environ.get("LOCAL_RANK")
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if local is None:
            return torch.device("cuda")
        # a torchrun rank: its GPU becomes the current device too, so that its kernels, streams
        # and CUDA graphs (which belong to the current device) are all on it
        n = torch.cuda.device_count()
        if int(local) >= n:
            raise UserError(f"this torchrun process has LOCAL_RANK {local} but {n} GPU(s) are "
                            f"visible; start at most {n} per node (--nproc-per-node {n}) or "
                            "pass --device cpu")
        dev = torch.device(f"cuda:{int(local)}")
        torch.cuda.set_device(dev)
        return dev
    return torch.device(device)


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_backend(path: str | os.PathLike, *, backend: str = "auto", kind: str | None = None,
                 convention: str = "auto", mask_id: int | None = None, device: str | None = None,
                 dtype: str | None = None, trust_remote_code: bool = False) -> Backend:
    """Open a model for generation. `kind` ("ar"/"dlm") overrides detection for HF folders."""
    if backend not in ("auto", "native", "hf", "vllm"):
        raise UserError(f"--backend {backend}: choose auto, native, hf or vllm")
    if convention not in CONVENTIONS:
        raise UserError(f"--convention {convention}: choose one of {', '.join(CONVENTIONS)}")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if backend == "vllm":
        return _load_vllm(str(path), dt)
    ckpt = resolve_checkpoint(path)
    if backend == "native" or (backend == "auto" and is_native_checkpoint(ckpt)):
        if not is_native_checkpoint(ckpt):
            raise UserError(f"--model {path}: not a codediff checkpoint (config.json has no "
                            "`codediff` block); use --backend hf")
        return _load_native(ckpt, dev, dt, kind, convention, mask_id)
    return _load_hf(ckpt, dev, dt, kind, convention, mask_id, trust_remote_code)


def _load_native(ckpt: Path, dev: torch.device, dt: torch.dtype, kind: str | None,
                 convention: str, mask_id: int | None) -> Backend:
    from codediff.checkpoints import load_checkpoint

    # inference weights in the asked dtype (bf16 on GPU): no per-call autocast casts, half the
    # bytes; float32 stays float32
    load_dtype = None if dt == torch.float32 else dt
    model, tok, meta = load_checkpoint(str(ckpt), device=str(dev), dtype=load_dtype)
    if mask_id is not None:
        meta = {**meta, "mask_id": mask_id}
    b = native_backend(model, tok, meta, device=dev, dtype=dt, path=str(ckpt))
    if kind is not None and kind != b.kind:
        if kind == "dlm" and b.kind == "ar":
            # an AR model read through the Dream convention is a left-to-right DLM
            if b.mask_id is None:
                raise UserError("serving an AR checkpoint as a DLM needs --mask-id")
            return ShiftedView(b, b.mask_id)
        raise UserError(f"{ckpt}: an `{meta.get('objective')}` checkpoint cannot generate as "
                        f"{kind}; drop --kind")
    if convention == "dream" and b.kind == "dlm":
        raise UserError("codediff mdm checkpoints use the LLaDA convention; drop --convention")
    return b


def native_backend(model: nn.Module, tokenizer: Any, meta: dict, *, device: torch.device,
                   dtype: torch.dtype | None = None, path: str = "") -> NativeBackend:
    """Wrap an in-memory codediff Transformer (and its `tokenizers.Tokenizer`) as a backend."""
    model.eval()
    cfg = model.config
    eot = meta.get("eot_id")
    pad = meta.get("pad_id")
    return NativeBackend(
        model, meta, tokenizer=NativeTokenizer(tokenizer), eos_ids=[] if eot is None else [eot],
        pad_id=pad if pad is not None else (eot if eot is not None else 0),
        mask_id=meta.get("mask_id"), device=device,
        flops=FlopsModel.of(model, cfg.n_layer, cfg.d_model, cfg.vocab_size),
        max_seq_len=cfg.max_seq_len, path=path, dtype=dtype)


def _hf_mask_id(config: Any, tok: Any, model: Any) -> int | None:
    for src in (config, getattr(model, "generation_config", None)):
        v = getattr(src, "mask_token_id", None) if src is not None else None
        if v is not None:
            return int(v)
    v = getattr(tok, "mask_token_id", None)
    if v is not None:
        return int(v)
    if getattr(config, "model_type", "") == "llada":
        return 126336  # LLaDA-8B's reserved mask id
    return None


def _load_hf(ckpt: Path, dev: torch.device, dt: torch.dtype, kind: str | None, convention: str,
             mask_id: int | None, trust_remote_code: bool) -> Backend:
    try:
        import transformers
    except ModuleNotFoundError as e:
        raise UserError("Hugging Face models need transformers: pip install 'codediff[hf]'") from e
    try:
        config = transformers.AutoConfig.from_pretrained(ckpt, trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise UserError(f"{ckpt}: transformers cannot read this config ({e}); if the model ships "
                        "its own code, add --trust-remote-code") from e
    model_type = str(getattr(config, "model_type", "")).lower()
    if convention == "auto":
        convention = "dream" if "dream" in model_type else "llada"
    if kind is None:
        dlm_type = model_type in ("llada", "dream") or "llada" in model_type
        kind = "dlm" if dlm_type or getattr(config, "mask_token_id", None) is not None else "ar"
    tok = transformers.AutoTokenizer.from_pretrained(ckpt, trust_remote_code=trust_remote_code)
    load_kw = dict(trust_remote_code=trust_remote_code, dtype=dt)
    if kind == "ar":
        model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, **load_kw)
    else:
        if trust_remote_code:
            from codediff import hf_compat

            # LLaDA / Dream remote code under transformers 5 (hf_compat's docstring)
            hf_compat.prepare(config, ckpt)
        model = _load_hf_dlm(transformers, ckpt, config, load_kw)
        if trust_remote_code:
            model = hf_compat.finish(model)
    model.to(dev).eval()
    n_layer = int(getattr(config, "num_hidden_layers", getattr(config, "n_layers", 0)) or 0)
    d_model = int(getattr(config, "hidden_size", getattr(config, "d_model", 0)) or 0)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    eos = _as_list(getattr(config, "eos_token_id", None)) + _as_list(tok.eos_token_id)
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        eos += _as_list(getattr(gen_cfg, "eos_token_id", None))
    for special in ("<|eot_id|>", "<|endoftext|>", "<|im_end|>"):
        tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
        if tid is not None and kind == "dlm":
            eos.append(int(tid))
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    common = dict(tokenizer=HFTokenizer(tok), eos_ids=eos, pad_id=pad, device=dev,
                  flops=FlopsModel.of(model, n_layer, d_model, vocab),
                  max_seq_len=getattr(config, "max_position_embeddings", None), path=str(ckpt),
                  dtype=dt)
    if kind == "ar":
        return HFCausalBackend(model, mask_id=None, **common)
    mid = mask_id if mask_id is not None else _hf_mask_id(config, tok, model)
    if mid is None:
        raise UserError(f"{ckpt}: no mask token id in the config or tokenizer; pass --mask-id")
    return HFDiffusionBackend(model, convention, mask_id=mid, **common)


def _load_hf_dlm(transformers: Any, ckpt: Path, config: Any, load_kw: dict) -> nn.Module:
    """LLaDA/Dream register AutoModel in their auto_map; plain HF models are causal or masked."""
    auto_map = getattr(config, "auto_map", None) or {}
    if "AutoModel" in auto_map and load_kw.get("trust_remote_code"):
        # the folder names its own class: its failure is the error to report (trying other
        # auto classes would hide it behind "Unrecognized configuration class")
        try:
            return transformers.AutoModel.from_pretrained(ckpt, **load_kw)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the folder's own code can raise anything
            msg = " ".join(str(e).split())[:300]
            raise UserError(f"{ckpt}: the model's own code ({auto_map['AutoModel']}) failed to "
                            f"load under transformers {transformers.__version__}: "
                            f"{type(e).__name__}: {msg}") from e
    order = ["AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM"]
    if "AutoModel" not in auto_map:
        order = ["AutoModelForMaskedLM", "AutoModelForCausalLM", "AutoModel"]
    last: Exception | None = None
    for name in order:
        try:
            return getattr(transformers, name).from_pretrained(ckpt, **load_kw)
        except (ValueError, KeyError, OSError) as e:
            last = e
    raise UserError(f"{ckpt}: transformers cannot load this DLM ({last}); does it need "
                    "--trust-remote-code?")


def _load_vllm(path: str, dt: torch.dtype) -> Backend:
    try:
        import vllm
    except ModuleNotFoundError as e:
        raise UserError("--backend vllm needs vLLM installed (pip install vllm); or use "
                        "--backend hf") from e
    llm = vllm.LLM(model=path, dtype=str(dt).replace("torch.", ""))
    tok = llm.get_tokenizer()
    eos = _as_list(tok.eos_token_id)
    return VLLMBackend(llm, tokenizer=HFTokenizer(tok), eos_ids=eos,
                       pad_id=eos[0] if eos else 0, mask_id=None, device=torch.device("cuda"),
                       flops=None, max_seq_len=None, path=path, dtype=dt)


def _dream_shift(logits: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Dream convention: shifted position i reads position i - 1 (position 0 reads itself).
    `logits` holds unshifted positions max(a - 1, 0) .. b - 1; returns shifted a .. b - 1."""
    if a == 0:
        return torch.cat([logits[:, :1], logits[:, :b - 1]], dim=1)
    return logits[:, :b - a]


def _at(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`logits_at` for a backend that computes every position: those positions' logits."""
    return logits.index_select(1, positions)


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits -> float32; float32/float64 stay as they are."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


def _as_list(v: Any) -> list[int]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [int(x) for x in v]
    return [int(v)]


class forward_context:
    """Around every generation / scoring forward on CUDA: bf16/fp16 autocast when asked for, and
    SDPA without cuDNN attention. cuDNN, PyTorch's first pick on Hopper, builds an execution plan
    for every new shape, and here shapes rarely repeat (a decode step's key length grows by one;
    prompts differ in length): on an H100 an AR decode step of a 10M model took ~50 ms.
    Flash / memory-efficient attention have no per-shape cost. A no-op on CPU."""

    def __init__(self, device: torch.device, dtype: torch.dtype | None):
        self.ctxs: list = []
        if device.type == "cuda":
            from codediff.model import attention_without_cudnn

            self.ctxs.append(attention_without_cudnn())
            if dtype in (torch.bfloat16, torch.float16):
                self.ctxs.append(torch.autocast("cuda", dtype=dtype))

    def __enter__(self) -> None:
        for c in self.ctxs:
            c.__enter__()

    def __exit__(self, *exc: Any) -> None:
        for c in reversed(self.ctxs):
            c.__exit__(*exc)

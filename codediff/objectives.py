"""Training objectives: next-token prediction (`ar`) and masked diffusion (`mdm`).

Randomness (diffusion times, mask draws, length cuts, AR input noise) is drawn by `draw_noise`
from a generator seeded by (run seed, global micro-batch index), outside any compiled code. So the
loss of a micro-batch does not depend on which rank computes it or whether the run was resumed:
a 2-process run equals a 1-process run with the same global batch, and a resumed run equals an
uninterrupted one.

`mdm` loss (LLaDA / MDLM): per sequence t ~ U(eps, 1), each token masked with probability t,
cross-entropy on masked positions weighted by 1/t, summed and divided by batch x length. Its
expectation is the negative ELBO, an upper bound on the NLL in nats/token.

Only masked positions carry loss, about half of them, so by default the output head and the
cross-entropy run on a fixed number K of gathered positions instead of all B x L (`head_capacity`):
the head is a large share of a small model's FLOPs and its logits most of the memory traffic.
K is a static bound (one compiled graph), set so that more than K masked tokens has probability
below 1e-9 per micro-batch; in that event the masked tokens past the K-th stay unmasked (the input
and the loss agree, so the loss is still the exact loss of the noise actually applied).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from codediff.config import OBJECTIVES, T_SAMPLING  # noqa: F401  (one list of the names)


@dataclass
class ObjectiveConfig:
    name: str = "ar"
    mask_id: int | None = None
    pad_id: int | None = None
    eps: float = 1e-3  # mdm: t ~ U(eps, 1) keeps the 1/t weight bounded
    t_sampling: str = "stratified"  # mdm: uniform | stratified (low-discrepancy) | antithetic
    cut_prob: float = 0.01  # mdm: a micro-batch is cut to a random length this often (LLaDA)
    # mdm: run the output head only on the masked positions (see `head_capacity`)
    masked_head: bool = True
    # the paper's AR ablations: corrupt input tokens (targets stay clean)
    ar_input_mask_prob: float = 0.0  # replace an input token by the mask token
    ar_input_noise_prob: float = 0.0  # replace an input token by a uniformly random token
    vocab_size: int = 0  # for AR input noise (random replacement tokens)

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective {self.name!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.t_sampling not in T_SAMPLING:
            raise ValueError(f"t sampling {self.t_sampling!r}: choose one of {T_SAMPLING}")
        if self.name == "mdm" and self.mask_id is None:
            raise ValueError("the mdm objective needs a mask token id")
        if self.ar_input_mask_prob > 0 and self.mask_id is None:
            raise ValueError("AR input masking needs a mask token id")
        if self.ar_input_noise_prob > 0 and self.vocab_size <= 0:
            raise ValueError("AR input noise needs the vocabulary size")


def micro_batch_generator(seed: int, index: int, device: torch.device | str) -> torch.Generator:
    """A generator owned by one micro-batch of the global stream."""
    g = torch.Generator(device=device)
    g.manual_seed(_mix(seed, index))
    return g


def _mix(seed: int, index: int) -> int:
    # large odd multipliers spread consecutive indices over the seed space
    return (seed * 0x9E3779B1 + index * 0x85EBCA77 + 0x165667B1) % (1 << 63)


def sample_t(n: int, eps: float, how: str, g: torch.Generator, device) -> torch.Tensor:
    """n diffusion times in [eps, 1). `stratified`: one per stratum of [0, 1) with a shared random
    offset (low-discrepancy); `antithetic`: pairs u, 1 - u."""
    if how == "uniform":
        u = torch.rand(n, generator=g, device=device)
    elif how == "stratified":
        u0 = torch.rand(1, generator=g, device=device)
        u = (u0 + torch.arange(n, device=device) / n) % 1.0
    else:
        half = torch.rand((n + 1) // 2, generator=g, device=device)
        u = torch.cat([half, 1.0 - half])[:n]
    return eps + (1.0 - eps) * u


def head_capacity(batch: int, seq_len: int, eps: float, how: str,
                  delta: float = 1e-9) -> int | None:
    """K for the masked-position head: a bound on the masked tokens of a micro-batch that holds
    with probability >= 1 - delta, or None when K would not save enough to pay for the gather.

    Given the times t_i the mask count is a sum of N = batch x seq_len independent Bernoullis, so
    Hoeffding gives P(count >= mean + a) <= exp(-2 a^2 / N). The mean L * sum(t_i) has a
    deterministic bound for stratified times (the u_i are a shifted grid k/n + theta/n, so
    sum u_i < (n + 1) / 2) and antithetic pairs (each pair sums to 1 + eps); uniform times have
    none, so they keep the full head."""
    n, N = batch, batch * seq_len
    if how == "stratified":
        sum_t = n * eps + (1 - eps) * (n + 1) / 2
    elif how == "antithetic":
        sum_t = (n // 2) * (1 + eps) + (n % 2)
    else:
        return None
    a = math.sqrt(N * math.log(1 / delta) / 2)
    k = math.ceil(seq_len * sum_t + a)
    k = -(-k // 64) * 64  # round up: matmul-friendly shapes
    return k if k <= 0.8 * N else None


def draw_noise(cfg: ObjectiveConfig, batch: int, seq_len: int, g: torch.Generator,
               device) -> dict:
    """All random numbers one micro-batch needs. `length` < seq_len marks a cut micro-batch."""
    noise: dict = {"length": seq_len}
    if cfg.name == "mdm":
        # host-side decision from the same seed: reading it back from the GPU would stall the
        # asynchronous pipeline every micro-batch
        host = torch.Generator().manual_seed(g.initial_seed() ^ 0x5DEECE66D)
        cut = torch.rand(1, generator=host).item() < cfg.cut_prob
        length = int(torch.randint(1, seq_len + 1, (1,), generator=host).item())
        noise["length"] = length if cut else seq_len
        noise["t"] = sample_t(batch, cfg.eps, cfg.t_sampling, g, device)
        if cfg.masked_head and noise["length"] == seq_len:
            noise["head_tokens"] = head_capacity(batch, seq_len, cfg.eps, cfg.t_sampling)
        noise["u"] = torch.rand(batch, seq_len, generator=g, device=device)
    elif cfg.ar_input_mask_prob > 0 or cfg.ar_input_noise_prob > 0:
        noise["u"] = torch.rand(batch, seq_len, generator=g, device=device)
        noise["r"] = torch.randint(0, max(cfg.vocab_size, 1), (batch, seq_len), generator=g,
                                   device=device)
    return noise


def ar_loss(model, x: torch.Tensor, noise: dict, cfg: ObjectiveConfig) -> torch.Tensor:
    """Mean next-token cross-entropy; x is [B, L+1] (inputs x[:, :-1], targets x[:, 1:])."""
    inputs, targets = x[:, :-1], x[:, 1:]
    if "u" in noise:
        u = noise["u"]
        p_mask, p_noise = cfg.ar_input_mask_prob, cfg.ar_input_noise_prob
        if p_noise > 0:
            inputs = torch.where(u < p_noise, noise["r"], inputs)
        if p_mask > 0:
            inputs = torch.where((u >= p_noise) & (u < p_noise + p_mask), cfg.mask_id, inputs)
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="mean")


def mdm_loss(model, x: torch.Tensor, noise: dict, cfg: ObjectiveConfig) -> torch.Tensor:
    """LLaDA loss on x[:, :L]: sum over masked tokens of CE / t, divided by B x L."""
    L = noise["length"]
    x0 = x[:, :L]
    t, u = noise["t"], noise["u"][:, :L]
    masked = u < t[:, None]
    K = noise.get("head_tokens")
    if K is None:
        xt = torch.where(masked, cfg.mask_id, x0)
        logits = model(xt)
        ce = F.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none").view_as(x0)
        weight = masked.to(ce.dtype) / t[:, None]
        return (ce * weight).sum() / x0.numel()
    # masked-position head: cap the mask at K tokens (a no-op but with probability < 1e-9),
    # gather the masked positions first (a stable sort keeps their order), pad with unmasked
    # ones that get weight 0
    flat = masked.flatten()
    flat = flat & (flat.cumsum(0) <= K)
    xt = torch.where(flat.view_as(x0), cfg.mask_id, x0)
    idx = torch.sort((~flat).to(torch.uint8), stable=True).indices[:K]
    logits = model(xt, logits_index=idx)  # [K, V]
    ce = F.cross_entropy(logits, x0.flatten()[idx], reduction="none")
    weight = flat[idx].to(ce.dtype) / t[idx // L]
    return (ce * weight).sum() / x0.numel()


def loss_fn(cfg: ObjectiveConfig):
    return ar_loss if cfg.name == "ar" else mdm_loss


# ----------------------------------------------------------------------------- validation

@torch.no_grad()
def ar_nll(model, windows: torch.Tensor, batch_size: int) -> float:
    """Mean NLL (nats/token) of the AR model on [N, L+1] windows."""
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size]
        logits = model(x[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(),
                                 reduction="sum").item()
        count += x[:, 1:].numel()
    return total / count


@torch.no_grad()
def mdm_neg_elbo(model, windows: torch.Tensor, batch_size: int, mask_id: int, samples: int,
                 seed: int = 1234, eps: float = 1e-3) -> float:
    """Monte Carlo negative ELBO (nats/token) on the first L tokens of [N, L+1] windows.

    Each window gets `samples` draws of (t, mask) with stratified t; the generator is seeded from
    `seed` and the window index alone, so evaluating a checkpoint twice gives the same number.
    """
    device = windows.device
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        x0 = windows[i:i + batch_size, :-1]
        B, L = x0.shape
        for j in range(samples):
            g = micro_batch_generator(seed, i * samples + j, device)
            # stratify t across the `samples` draws of each window
            u0 = torch.rand(B, generator=g, device=device)
            t = eps + (1 - eps) * ((u0 + j) / samples)
            masked = torch.rand(B, L, generator=g, device=device) < t[:, None]
            xt = torch.where(masked, mask_id, x0)
            logits = model(xt)
            ce = F.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none").view_as(x0)
            total += (ce * masked / t[:, None]).sum().item() / samples
        count += x0.numel()
    return total / count

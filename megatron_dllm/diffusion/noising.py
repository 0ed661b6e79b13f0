"""Forward (noising) process q(xt | x0, t) of masked diffusion with an absorbing [MASK] state.

Linear schedule (METHOD.md 1, 2.1): alpha_t = 1 - t, so every maskable token is replaced by the mask
token independently with probability t. t lies in [eps, 1] (pre-training, eps = 1e-3 as in LLaDA /
MDLM) or in a band [t_low, t_high] (SFT, dFactory default 0.3-0.8, METHOD.md 6.1). t is never
clamped: the sampler draws it inside its interval.

All tensors are batch-first: ``x0 [B, L]``. Randomness comes only from explicit ``torch.Generator``
objects; nothing here touches the global RNG, and nothing synchronises with the device.

Samplers of t (``NoiseConfig.sampling``), over the N draws of one stratification group, draw i:

* ``"iid"``: u_i ~ U[0, 1) independently.
* ``"antithetic"``: MDLM / BD3-LM ``antithetic_sampling`` (METHOD.md 2.3), one draw per stratum:
  u_i = (((i + r) mod N) + v_i) / N with jitters v_i ~ U[0, 1) independent.
* ``"stratified"``: evenly spaced (systematic sampling, as LLaDA's log-likelihood evaluation spaces
  its mask counts): u_i = (((i + r) mod N) + v) / N with one jitter v for the group.

r, uniform on {0, ..., N-1}, rotates the assignment of draws to strata and is shared by the group.
MDLM / BD3-LM have no rotation, so draw i always lands in [i/N, (i+1)/N): the row at a given batch
position, or block k of every sequence, would then always see the same range of t, which biases
the loss unless data order is random. With the rotation every draw is marginally U[0, 1) whatever
its index, and the N draws still hold one per stratum (the variance reduction stays).

Then t = lo + (hi - lo) * u with [lo, hi] = [eps, 1] or the band. With ``granularity="block"`` every
block of a sequence has its own t (BD3-LM); draw (sample j, block k) has index i = k * n + j, so the
blocks of one sequence are spread evenly over the range of t.

Deterministic noise for distributed training (DESIGN.md decision 7): ``apply_noise_per_sample``
derives each row's randomness from ``noise_generator(seed, global_sample_index, iteration)``, so
the noise of a sample depends on nothing but those three integers (not on the micro-batch size, the
row's position, the rank, or the device). Stratification groups are defined on global sample
indices: sample s has j = s mod n in group g = s // n, with n = ``NoiseConfig.num_strata`` (set it
to the global batch size). Jitters come from the sample's own generator; the rotation r (and the
shared jitter of "stratified") from ``noise_generator(seed, g, iteration, stream=STREAM_GROUP)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .seeding import STREAM_GROUP, STREAM_SAMPLE, mix_seed, noise_generator  # noqa: F401 (re-export)

SAMPLINGS = ("iid", "antithetic", "stratified")
GRANULARITIES = ("sequence", "block")



@dataclass(frozen=True)
class NoiseConfig:
    """How t is drawn.

    Attributes:
        eps: lower end of t when no band is given: t ~ U[eps, 1]. In (0, 1).
        t_low: lower end of the band (SFT: 0.3). Give both ``t_low`` and ``t_high`` or neither.
        t_high: upper end of the band (SFT: 0.8). 0 < t_low <= t_high <= 1.
        sampling: "iid", "antithetic" or "stratified" (see the module docstring).
        granularity: "sequence" (one t per row) or "block" (one t per block of ``block_size``).
        num_strata: size n of a stratification group in ``apply_noise_per_sample`` (use the global
            batch size). Required there unless sampling is "iid"; ``sample_t`` stratifies over the
            draws of its own call and ignores it.
    """

    eps: float = 1e-3
    t_low: Optional[float] = None
    t_high: Optional[float] = None
    sampling: str = "iid"
    granularity: str = "sequence"
    num_strata: Optional[int] = None

    def __post_init__(self) -> None:
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"NoiseConfig.eps must be in (0, 1), got {self.eps}")
        if (self.t_low is None) != (self.t_high is None):
            raise ValueError("NoiseConfig: give both t_low and t_high (a band) or neither")
        if self.t_low is not None and not 0.0 < self.t_low <= self.t_high <= 1.0:
            raise ValueError(
                f"NoiseConfig: the band must satisfy 0 < t_low <= t_high <= 1, "
                f"got [{self.t_low}, {self.t_high}]"
            )
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"NoiseConfig.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"NoiseConfig.granularity must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if self.num_strata is not None and self.num_strata < 1:
            raise ValueError(f"NoiseConfig.num_strata must be >= 1, got {self.num_strata}")

    @property
    def bounds(self) -> tuple[float, float]:
        """(lo, hi): the interval t is drawn from, [eps, 1] or the band."""
        if self.t_low is not None:
            return float(self.t_low), float(self.t_high)
        return float(self.eps), 1.0


@dataclass(frozen=True)
class NoiseResult:
    """Output of the forward process (batch-first).

    Attributes:
        xt: [B, L] long, x0 with the noised positions replaced by the mask token.
        noise_mask: [B, L] bool, True where xt holds the mask token because of noising.
        t_per_token: [B, L] float32, the t (mask probability) each position was noised with.
    """

    xt: torch.Tensor
    noise_mask: torch.Tensor
    t_per_token: torch.Tensor


# ---------------------------------------------------------------------------------------------
# t samplers


def _stratify(index: torch.Tensor, n: int, jitter: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """((index + rotation) mod n + jitter) / n, computed in float64, returned as float32."""
    stratum = torch.remainder(index + rotation, n)
    return ((stratum.double() + jitter.double()) / n).float()


def _to_t(u: torch.Tensor, cfg: NoiseConfig) -> torch.Tensor:
    lo, hi = cfg.bounds
    return lo + (hi - lo) * u


def sample_t(batch: int, num_blocks: int, cfg: NoiseConfig, generator: torch.Generator,
             device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Draw t for a batch, stratified across the B * K draws of this call.

    Args:
        batch: B, rows in the batch.
        num_blocks: K, blocks per row; must be 1 for ``granularity="sequence"``.
        cfg: the sampler.
        generator: source of randomness; draws happen on its device.
        device: where the result goes (default: the generator's device).

    Returns:
        t: float32 [B] (sequence granularity) or [B, K] (block granularity), in [lo, hi].
        Draw (b, k) has index i = k * B + b in the module docstring's formulas.
    """
    if cfg.granularity == "sequence" and num_blocks != 1:
        raise ValueError(f"sample_t: granularity 'sequence' needs num_blocks == 1, got {num_blocks}")
    n = batch * num_blocks
    gdev = generator.device
    if cfg.sampling == "iid":
        u = torch.rand(num_blocks, batch, generator=generator, device=gdev)
    else:
        index = torch.arange(n, device=gdev).view(num_blocks, batch)
        rotation = torch.randint(0, n, (1,), generator=generator, device=gdev)
        shape = (num_blocks, batch) if cfg.sampling == "antithetic" else (1,)
        jitter = torch.rand(shape, generator=generator, device=gdev)
        u = _stratify(index, n, jitter, rotation)
    t = _to_t(u.t().contiguous(), cfg)
    if device is not None:
        t = _to_device(t, torch.device(device))
    return t if cfg.granularity == "block" else t[:, 0]


def _sample_t_one(sample_index: int, num_blocks: int, cfg: NoiseConfig, seed: int, iteration: int,
                  generator: torch.Generator) -> torch.Tensor:
    """t [K] (CPU) for one sample: jitter from its own generator, rotation from its group's."""
    if cfg.sampling == "iid":
        return _to_t(torch.rand(num_blocks, generator=generator), cfg)
    if cfg.num_strata is None:
        raise ValueError(
            f"NoiseConfig.num_strata must be set (to the global batch size) for sampling "
            f"{cfg.sampling!r} with per-sample generators"
        )
    n = cfg.num_strata
    stratum, group = sample_index % n, sample_index // n
    index = torch.arange(num_blocks) * n + stratum
    group_gen = noise_generator(seed, group, iteration, stream=STREAM_GROUP)
    rotation = torch.randint(0, n * num_blocks, (1,), generator=group_gen)
    if cfg.sampling == "antithetic":
        jitter = torch.rand(num_blocks, generator=generator)
    else:
        jitter = torch.rand(1, generator=group_gen)
    return _to_t(_stratify(index, n * num_blocks, jitter, rotation), cfg)


# ---------------------------------------------------------------------------------------------
# Forward process


def expand_t(t: torch.Tensor, seq_len: int, block_size: Optional[int] = None) -> torch.Tensor:
    """Broadcast t [B] or [B, K] to per-token t [B, L] (float32).

    [B, K] needs ``block_size`` with K * block_size == L.
    """
    t = t.to(torch.float32)
    if t.dim() == 1:
        return t[:, None].expand(t.shape[0], seq_len)
    if t.dim() != 2:
        raise ValueError(f"t must be [B] or [B, K], got shape {tuple(t.shape)}")
    if block_size is None or t.shape[1] * block_size != seq_len:
        raise ValueError(
            f"t of shape {tuple(t.shape)} is per block: pass block_size with "
            f"K * block_size == L = {seq_len} (got block_size={block_size})"
        )
    return t.repeat_interleave(block_size, dim=1)


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy CPU draws to the device without blocking the host (pinned, non_blocking on CUDA)."""
    if x.device == device:
        return x
    if x.device.type == "cpu" and device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _noise_from_uniform(x0: torch.Tensor, u: torch.Tensor, t_tok: torch.Tensor, mask_token_id: int,
                        loss_mask: Optional[torch.Tensor]) -> NoiseResult:
    t_tok = _to_device(t_tok.contiguous(), x0.device)
    noise_mask = _to_device(u, x0.device) < t_tok
    if loss_mask is not None:
        noise_mask = noise_mask & loss_mask.to(device=x0.device, dtype=torch.bool)
    xt = torch.where(noise_mask, torch.full_like(x0, mask_token_id), x0)
    return NoiseResult(xt=xt, noise_mask=noise_mask, t_per_token=t_tok)


def apply_noise(x0: torch.Tensor, t: torch.Tensor, mask_token_id: int,
                loss_mask: Optional[torch.Tensor], generator: torch.Generator,
                block_size: Optional[int] = None) -> NoiseResult:
    """Mask each maskable token of x0 independently with probability t.

    Args:
        x0: [B, L] long, clean tokens (batch-first).
        t: [B] (one t per row) or [B, K] (one per block, with ``block_size``), values in [eps, 1]
            (not checked: that would need a host sync).
        mask_token_id: the absorbing [MASK] id.
        loss_mask: [B, L] bool or None; only True positions may be noised (prompt / padding stay).
        generator: draws the [B, L] uniforms on its own device.
        block_size: block length when t is per block.

    Returns:
        NoiseResult with xt, noise_mask and t_per_token, all [B, L] on x0's device.
    """
    B, L = x0.shape
    t_tok = expand_t(t, L, block_size)
    u = torch.rand(B, L, generator=generator, device=generator.device)
    return _noise_from_uniform(x0, u, t_tok, mask_token_id, loss_mask)


def apply_noise_per_sample(x0: torch.Tensor, sample_indices: Union[Sequence[int], torch.Tensor],
                           seed: int, iteration: int, cfg: NoiseConfig, mask_token_id: int,
                           loss_mask: Optional[torch.Tensor] = None,
                           block_size: Optional[int] = None) -> NoiseResult:
    """Noise every row from its own generator: deterministic per (seed, sample index, iteration).

    Row r uses ``noise_generator(seed, sample_indices[r], iteration)``: first its K draws for t
    (K = 1, or L // block_size for block granularity; none for "stratified", whose jitter is the
    group's), then L uniforms for the mask. So the noise of a sample does not depend on which other
    samples share its micro-batch, on its row, on the rank, or on the device. Random numbers are
    drawn on CPU (a few microseconds per row) and copied to x0's device once, without blocking.

    Args:
        x0: [B, L] long, clean tokens (batch-first).
        sample_indices: B global sample indices (a list of ints or a 1-D CPU tensor).
        seed, iteration: the run seed and the training iteration (non-negative ints).
        cfg: the t sampler; stratified samplers need ``cfg.num_strata``.
        mask_token_id: the [MASK] id.
        loss_mask: [B, L] bool or None; only True positions may be noised.
        block_size: block length, required for block granularity (must divide L).

    Returns:
        NoiseResult, all [B, L] on x0's device.
    """
    B, L = x0.shape
    if isinstance(sample_indices, torch.Tensor):
        sample_indices = sample_indices.tolist()  # CPU metadata from the data loader
    sample_indices = [int(s) for s in sample_indices]
    if len(sample_indices) != B:
        raise ValueError(f"apply_noise_per_sample: {len(sample_indices)} sample indices for {B} rows")
    if cfg.granularity == "block":
        if block_size is None or block_size < 1 or L % block_size != 0:
            raise ValueError(
                f"apply_noise_per_sample: block granularity needs a block_size dividing L = {L}, "
                f"got {block_size}"
            )
        num_blocks = L // block_size
    else:
        num_blocks = 1
    ts, us = [], []
    for s in sample_indices:
        gen = noise_generator(seed, s, iteration)
        ts.append(_sample_t_one(s, num_blocks, cfg, seed, iteration, gen))
        us.append(torch.rand(L, generator=gen))
    t = torch.stack(ts)
    t = t if cfg.granularity == "block" else t[:, 0]
    t_tok = expand_t(t, L, block_size if cfg.granularity == "block" else None)
    return _noise_from_uniform(x0, torch.stack(us), t_tok, mask_token_id, loss_mask)


def complement(result: NoiseResult, x0: torch.Tensor, mask_token_id: int,
               loss_mask: Optional[torch.Tensor] = None) -> NoiseResult:
    """The complementary instance of a noised batch (SFT complementary masking, METHOD.md 6.2).

    Its noise mask is the inverse of ``result.noise_mask`` on the maskable positions, so each
    maskable token is noised in exactly one of the two instances. Its t is 1 - t (its expected mask
    ratio, the LaViDa convention, so a 1/t weight becomes 1/(1 - t)); where t = 1 the complement
    has no noised token and t = 0 carries no weight (the losses never divide by t off the mask).

    Args:
        result: the first instance, tensors [B, L].
        x0: [B, L] long, clean tokens.
        mask_token_id: the [MASK] id.
        loss_mask: [B, L] bool or None (all positions maskable).
    """
    noise_mask = ~result.noise_mask
    if loss_mask is not None:
        noise_mask = noise_mask & loss_mask.to(device=x0.device, dtype=torch.bool)
    xt = torch.where(noise_mask, torch.full_like(x0, mask_token_id), x0)
    return NoiseResult(xt=xt, noise_mask=noise_mask, t_per_token=1.0 - result.t_per_token)


def complementary_pair(x0: torch.Tensor, t: torch.Tensor, mask_token_id: int,
                       loss_mask: Optional[torch.Tensor], generator: torch.Generator,
                       block_size: Optional[int] = None) -> tuple[NoiseResult, NoiseResult]:
    """``apply_noise`` and its ``complement``: two [B, L] instances sharing x0 (see both)."""
    first = apply_noise(x0, t, mask_token_id, loss_mask, generator, block_size)
    return first, complement(first, x0, mask_token_id, loss_mask)

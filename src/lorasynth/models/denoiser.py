"""The prior's denoiser: a residual MLP over vectors, conditioned on a face embedding.

Two conditioning mechanisms with one interface, `Denoiser(x_t, t, cond, drop=None)`:
- adanorm: the condition joins the timestep in adaLN-Zero (scale, shift and gate of every
  block's normalised activations come from them; zero-initialised so blocks start as identity).
- adalora: the timestep alone drives adaLN-Zero; the condition generates per-sample low-rank
  deltas of each block's own linear weights, W + U(c) V(c)^T (zero-initialised U).
Condition dropout for classifier-free guidance lives in the condition embedder: rows with
`drop` (or dropped at random while training) use a learned null embedding instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from lorasynth.errors import LorasynthError

CONDITIONINGS = ("adanorm", "adalora")


@dataclass(frozen=True)
class DenoiserConfig:
    data_dim: int
    cond_dim: int
    width: int = 512
    depth: int = 6
    conditioning: str = "adalora"
    adalora_rank: int = 8
    cond_embed_dim: int = 256
    cond_dropout: float = 0.1
    target: str = "v"

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise LorasynthError(
                f"unknown conditioning {self.conditioning!r}; choose {' or '.join(CONDITIONINGS)}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled to the usual 0..1000 range)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10_000) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = (t.float() * 1000)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ConditionEmbedder(nn.Module):
    """Face embedding -> condition vector; a learned null vector stands in for dropped rows."""

    def __init__(self, cond_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cond_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )
        self.null = nn.Parameter(torch.zeros(out_dim))
        self.dropout = dropout

    def forward(
        self,
        cond: torch.Tensor,
        drop: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if drop is None and self.training and self.dropout > 0:
            drop = torch.rand(cond.shape[0], generator=generator) < self.dropout
        out = self.net(cond)
        if drop is not None:
            out = torch.where(drop[:, None], self.null.expand_as(out), out)
        return out


class AdaLoraLinear(nn.Module):
    """Linear layer whose weight gets a per-sample low-rank delta generated from the condition."""

    def __init__(self, d_in: int, d_out: int, cond_dim: int, rank: int) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.rank = rank
        self.make_v = nn.Linear(cond_dim, d_in * rank)
        self.make_u = nn.Linear(cond_dim, d_out * rank)
        nn.init.zeros_(self.make_u.weight)  # start as the plain linear layer
        nn.init.zeros_(self.make_u.bias)

    def factors(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (U, V): depends on the condition only, so samplers compute it once."""
        d_in = self.base.in_features
        v = self.make_v(c).view(-1, d_in, self.rank) / math.sqrt(d_in)
        u = self.make_u(c).view(-1, self.base.out_features, self.rank)
        return u, v

    def forward(self, x: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        u, v = factors
        low = torch.einsum("bi,bir->br", x, v)
        return self.base(x) + torch.einsum("br,bor->bo", low, u)


class Block(nn.Module):
    """Pre-norm residual MLP block with adaLN-Zero; its two linears may be AdaLoRA layers."""

    def __init__(self, width: int, mod_dim: int, cond_dim: int, adalora_rank: int | None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(mod_dim, 3 * width)
        nn.init.zeros_(self.modulation.weight)  # adaLN-Zero: the block starts as the identity
        nn.init.zeros_(self.modulation.bias)
        if adalora_rank:
            self.fc1 = AdaLoraLinear(width, 2 * width, cond_dim, adalora_rank)
            self.fc2 = AdaLoraLinear(2 * width, width, cond_dim, adalora_rank)
        else:
            self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.act = nn.SiLU()

    def condition_factors(self, c: torch.Tensor) -> tuple | None:
        if isinstance(self.fc1, AdaLoraLinear):
            return self.fc1.factors(c), self.fc2.factors(c)
        return None

    def forward(
        self, h: torch.Tensor, modulation: torch.Tensor, factors: tuple | None
    ) -> torch.Tensor:
        """`modulation`: this block's projected adaLN input (B or 1, 3 * width), see Denoiser."""
        shift, scale, gate = modulation.chunk(3, dim=-1)
        x = modulate(self.norm(h), shift, scale)
        if factors is not None:
            x = self.fc2(self.act(self.fc1(x, factors[0])), factors[1])
        else:
            x = self.fc2(self.act(self.fc1(x)))
        return h + gate * x


class Denoiser(nn.Module):
    """Predicts config.target for x_t at time t given a face embedding."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        w, e = config.width, config.cond_embed_dim
        self.cond_embedder = ConditionEmbedder(config.cond_dim, e, config.cond_dropout)
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.inp = nn.Linear(config.data_dim, w)
        adalora = config.conditioning == "adalora"
        mod_dim = w if adalora else w + e
        self.blocks = nn.ModuleList(
            Block(w, mod_dim, e, config.adalora_rank if adalora else None)
            for _ in range(config.depth)
        )
        self.out_norm = nn.LayerNorm(w, elementwise_affine=False)
        self.out = nn.Linear(w, config.data_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        drop: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return self.denoise(x, t, self.encode_condition(cond, drop, generator))

    def encode_condition(
        self,
        cond: torch.Tensor,
        drop: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ConditionCache:
        """Everything that depends on the condition alone (reused across sampling steps)."""
        c = self.cond_embedder(cond, drop, generator)
        factors = [block.condition_factors(c) for block in self.blocks]
        if self.config.conditioning == "adalora":
            return ConditionCache(c, factors, [None] * len(self.blocks))
        # AdaNorm modulates from silu([time; condition]): W [a; b] = W_t a + W_c b, so the
        # condition's part is computed here, once per call, and each step adds the time's part.
        w, sc = self.config.width, torch.nn.functional.silu(c)
        parts = [sc @ block.modulation.weight[:, w:].T for block in self.blocks]
        return ConditionCache(c, factors, parts)

    def time_modulations(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Per block, the time's part of the adaLN modulation (bias included), (len(t), 3w)."""
        w = self.config.width
        temb = torch.nn.functional.silu(self.time_mlp(timestep_embedding(t, w)))
        return [
            torch.nn.functional.linear(temb, block.modulation.weight[:, :w], block.modulation.bias)
            for block in self.blocks
        ]

    def at_times(self, cache: ConditionCache, times: torch.Tensor) -> ConditionCache:
        """The cache with the time parts for a sampler's whole grid, computed in one batch:
        sampling then reads no modulation weights per step (measured: ~40% of the prior's
        weight traffic at SD1.5 size, where a step is bound by reading weights)."""
        per_block = self.time_modulations(times)
        table = {float(t): [m[i : i + 1] for m in per_block] for i, t in enumerate(times)}
        return replace(cache, time_table=table)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cache: ConditionCache) -> torch.Tensor:
        key = float(t[0])
        if key in cache.time_table and bool((t == t[0]).all()):
            time_parts = cache.time_table[key]
        else:
            time_parts = self.time_modulations(t)
        h = self.inp(x)
        for block, factors, time_part, cond_part in zip(
            self.blocks, cache.factors, time_parts, cache.cond_modulations, strict=True
        ):
            h = block(h, time_part if cond_part is None else time_part + cond_part, factors)
        return self.out(self.out_norm(h))


@dataclass(frozen=True)
class ConditionCache:
    embedding: torch.Tensor  # (B, cond_embed_dim)
    factors: list  # per block: AdaLoRA (U, V) pairs of fc1 and fc2, or None (AdaNorm)
    cond_modulations: list  # per block: the condition's part of the modulation (AdaNorm) or None
    time_table: dict = field(default_factory=dict)  # t -> per block time part (Denoiser.at_times)

"""Canonical LoRA vectors: one vector per LoRA that depends only on the updates dW it makes.

For each module, dW = s * B @ A (B: out x r, A: r x in). With reduced QRs A^T = Qa Ra and
B = Qb Rb, the small core M = s * Rb @ Ra^T (r x r) has SVD U S V^T, and
    B' = Qb U sqrt(S),   A' = sqrt(S) V^T Qa^T,
so B' A' = dW without ever forming dW. Each (column of B', row of A') pair is flipped so the
largest-magnitude entry of the B' column is positive; ranks below the layout's are zero-padded.
Vector = per module A' (r x in) then B' (out x r), row-major, in layout order, float32.

Cost is O((in + out) r^2) per module, and modules of equal shape are batched across LoRAs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from lorasynth.errors import LorasynthError
from lorasynth.lora.formats import LoraFile, LoraModule, check_fits_layout
from lorasynth.lora.layout import LoraLayout

# float64 keeps unflatten(flatten(x)) within 1e-5 relative even for ill-conditioned factors.
_WORK_DTYPE = torch.float64


def canonical_factors(
    down: torch.Tensor, up: torch.Tensor, scale: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched canonical (A', B') for down (N, r, in), up (N, out, r), scale (N,), padded to `rank`.

    Returns A' (N, rank, in) and B' (N, out, rank); float64 unless r == 1.
    """
    if down.shape[1] == 1:
        # Rank one is only normalisation, well conditioned in float32: keep the input precision.
        dtype = torch.promote_types(down.dtype, torch.float32)
        down, up = down.to(dtype), up.to(dtype)
        ca, cb = _rank_one_coefficients(down, up, scale.to(dtype))
        return _pad_rank(down * ca, up * cb, rank)
    down = down.to(_WORK_DTYPE)
    up = up.to(_WORK_DTYPE)
    scale = scale.to(_WORK_DTYPE)
    q_a, r_a = torch.linalg.qr(down.transpose(1, 2))  # (N, in, k), (N, k, r)
    q_b, r_b = torch.linalg.qr(up)  # (N, out, k'), (N, k', r)
    core = scale[:, None, None] * (r_b @ r_a.transpose(1, 2))
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    root = s.sqrt()
    b_prime = (q_b @ u) * root[:, None, :]
    a_prime = root[:, :, None] * (vh @ q_a.transpose(1, 2))
    a_prime, b_prime = _fix_signs(a_prime, b_prime)
    return _pad_rank(a_prime, b_prime, rank)


def _rank_one_coefficients(
    down: torch.Tensor, up: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ca, cb) of shape (N, 1, 1) with A' = ca * A and B' = cb * B for rank-one LoRAs.

    dW = s b a^T = sigma (b/|b|)(a/|a|)^T with sigma = |s| |a| |b|: no QR/SVD needed, and
    the result is two scalings, which the caller can write straight into its output.
    """
    norm_a = down.norm(dim=2, keepdim=True)
    norm_b = up.norm(dim=1, keepdim=True)
    root = (scale.abs()[:, None, None] * norm_a * norm_b).sqrt()
    flip = _column_signs(up) * torch.where(scale < 0, -1.0, 1.0).to(down.dtype)[:, None, None]
    ca = torch.where(norm_a > 0, root / norm_a.clamp_min(1e-30), 0.0) * flip
    cb = torch.where(norm_b > 0, root / norm_b.clamp_min(1e-30), 0.0) * _column_signs(up)
    return ca, cb


def _column_signs(b: torch.Tensor) -> torch.Tensor:
    """+1/-1 per column of b (N, out, k): the sign of its largest-magnitude entry.

    A tie between +x and -x resolves to +1; amax/amin avoid materialising |b|.
    """
    return torch.where(b.amax(dim=1, keepdim=True) >= -b.amin(dim=1, keepdim=True), 1.0, -1.0).to(
        b.dtype
    )


def _fix_signs(a_prime: torch.Tensor, b_prime: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each (B' column, A' row) pair so the B' column's largest-|.| entry is positive."""
    sign = _column_signs(b_prime)  # (N, 1, k)
    return a_prime * sign.transpose(1, 2), b_prime * sign


def _pad_rank(
    a_prime: torch.Tensor, b_prime: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    k = a_prime.shape[1]
    if k > rank:
        # Only zero singular values may be dropped (more factors than in/out dimensions).
        a_prime, b_prime = a_prime[:, :rank], b_prime[:, :, :rank]
    elif k < rank:
        a_prime = torch.nn.functional.pad(a_prime, (0, 0, 0, rank - k))
        b_prime = torch.nn.functional.pad(b_prime, (0, rank - k))
    return a_prime, b_prime


def flatten_batch(loras: Sequence[LoraFile], layout: LoraLayout) -> torch.Tensor:
    """Canonical vectors (N, layout.size) float32 for LoRAs that fit `layout`."""
    for lora in loras:
        check_fits_layout(lora, layout)
    out = torch.empty(len(loras), layout.size, dtype=torch.float32)
    # One batched call per (module, file rank): all LoRAs' copies of a module go through together.
    for j, row in enumerate(layout.rows):
        start, stop = layout.offsets[j], layout.offsets[j + 1]
        n_a = row.rank * row.in_features
        by_rank: dict[int, list[int]] = defaultdict(list)
        mods = [lora.modules[row.module] for lora in loras]
        for i, m in enumerate(mods):
            by_rank[m.down.shape[0]].append(i)
        for members in by_rank.values():
            group = [mods[i] for i in members]
            down = torch.stack([m.down for m in group])
            up = torch.stack([m.up for m in group])
            scale = torch.tensor([m.scale for m in group], dtype=_WORK_DTYPE)
            # All LoRAs usually share a rank: a plain slice is much cheaper than fancy indexing.
            rows = slice(None) if len(members) == len(loras) else torch.tensor(members)
            if down.shape[1] == 1 and row.rank == 1 and isinstance(rows, slice):
                # Hot path (w2w banks): scale straight into the output, no temporaries.
                ca, cb = _rank_one_coefficients(down.float(), up.float(), scale.float())
                n = len(members)
                torch.mul(down, ca, out=out[:, start : start + n_a].view(n, 1, -1))
                torch.mul(up, cb, out=out[:, start + n_a : stop].view(n, -1, 1))
                continue
            a_prime, b_prime = canonical_factors(down, up, scale, row.rank)
            out[rows, start : start + n_a] = a_prime.reshape(len(members), -1).to(out.dtype)
            out[rows, start + n_a : stop] = b_prime.reshape(len(members), -1).to(out.dtype)
    return out


def flatten(lora: LoraFile, layout: LoraLayout | None = None) -> torch.Tensor:
    """Canonical vector (layout.size,) float32 of one LoRA (its own layout if none given)."""
    return flatten_batch([lora], layout or lora.layout())[0]


def unflatten(vector: torch.Tensor, layout: LoraLayout, metadata: dict | None = None) -> LoraFile:
    """LoRA whose modules are the canonical factors in `vector` (alpha = rank, so scale 1)."""
    vector = vector.detach().reshape(-1).to(torch.float32)
    if vector.numel() != layout.size:
        raise LorasynthError(
            f"vector has {vector.numel():,} values but {layout.describe()} needs {layout.size:,}"
        )
    if not torch.isfinite(vector).all():
        raise LorasynthError("vector contains NaN or Inf")
    modules = {}
    for j, row in enumerate(layout.rows):
        block = vector[layout.offsets[j] : layout.offsets[j + 1]]
        n_a = row.rank * row.in_features
        down = block[:n_a].reshape(row.rank, row.in_features).clone()
        up = block[n_a:].reshape(row.out_features, row.rank).clone()
        modules[row.module] = LoraModule(down, up, float(row.rank), row.kernel)
    meta = {"lorasynth.layout_hash": layout.hash, "lorasynth.layout": layout.to_json()}
    meta.update(metadata or {})
    return LoraFile(modules, "diffusers", meta)

"""The denoiser's precomputed modulations give exactly the adaLN-Zero of the paper's formula."""

from __future__ import annotations

import pytest
import torch

from lorasynth.models.denoiser import Denoiser, DenoiserConfig, timestep_embedding
from lorasynth.models.sampling import sample, time_grid


def _random_denoiser(conditioning: str) -> Denoiser:
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(12, 6, 16, 2, conditioning, 2, 8)).eval()
    with torch.no_grad():  # adaLN-Zero starts at zero: randomise so the modulation matters
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _reference(model: Denoiser, x, t, cond):
    """The textbook computation: every block projects silu([temb; c]) itself, each step."""
    cache = model.encode_condition(cond)
    temb = model.time_mlp(timestep_embedding(t, model.config.width))
    adalora = model.config.conditioning == "adalora"
    mod = torch.nn.functional.silu(temb if adalora else torch.cat([temb, cache.embedding], -1))
    h = model.inp(x)
    for block, factors in zip(model.blocks, cache.factors, strict=True):
        h = block(h, block.modulation(mod), factors)
    return model.out(model.out_norm(h))


@pytest.mark.parametrize("conditioning", ["adalora", "adanorm"])
def test_split_modulation_equals_the_formula(conditioning):
    model = _random_denoiser(conditioning)
    x, cond = torch.randn(5, 12), torch.randn(5, 6)
    t = torch.rand(5)
    with torch.no_grad():
        want = _reference(model, x, t, cond)
        got = model(x, t, cond)
        assert torch.allclose(got, want, atol=1e-5)
        # Precomputed for a grid: the same predictions at the grid's times, batch-wide.
        times = time_grid(4)[:-1]
        cache = model.at_times(model.encode_condition(cond), times)
        for tt in times:
            full = torch.full((5,), float(tt))
            assert torch.allclose(
                model.denoise(x, full, cache), _reference(model, x, full, cond), atol=1e-5
            )


@pytest.mark.parametrize("conditioning", ["adalora", "adanorm"])
def test_sampling_with_and_without_the_time_table_agree(conditioning, monkeypatch):
    model = _random_denoiser(conditioning)
    cond = torch.randn(3, 6)
    fast = sample(model, cond, 12, "v", 6, 2.0, 0.0, torch.Generator().manual_seed(1))
    monkeypatch.setattr(Denoiser, "at_times", lambda self, cache, times: cache)
    slow = sample(model, cond, 12, "v", 6, 2.0, 0.0, torch.Generator().manual_seed(1))
    assert torch.allclose(fast, slow, atol=1e-5) and not torch.equal(fast, torch.zeros_like(fast))

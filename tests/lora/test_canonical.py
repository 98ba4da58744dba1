from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lorasynth.errors import LorasynthError
from lorasynth.lora import (
    LoraFile,
    LoraLayout,
    LoraModule,
    flatten,
    flatten_batch,
    read_lora,
    unflatten,
    write_lora,
)
from tests.conftest import random_lora

MODULES = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
)


def _orthonormal(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return q


def _well_separated_lora(seed: int, d_in: int, d_out: int, rank: int) -> LoraFile:
    """Factors of an update with singular values 1, 2.5, 4, ...: its canonical form is unique."""
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name in MODULES:
        s = torch.tensor([1.0 + 1.5 * k for k in range(rank)], dtype=torch.float64)
        u, v = _orthonormal(d_out, rank, gen), _orthonormal(d_in, rank, gen)
        up, down = u * s.sqrt(), (v * s.sqrt()).T
        modules[name] = LoraModule(down, up, float(rank))
    return LoraFile(modules)


def _reparametrise(lora: LoraFile, seed: int, alpha_factor: float) -> LoraFile:
    """A -> R A, B -> B R^-1 with a well-conditioned R, and a different alpha with B rescaled."""
    gen = torch.Generator().manual_seed(seed + 1000)
    out = {}
    for name, w in lora.modules.items():
        r = w.rank
        q1, q2 = _orthonormal(r, r, gen), _orthonormal(r, r, gen)
        d = 0.5 + 1.5 * torch.rand(r, generator=gen, dtype=torch.float64)
        mix = q1 @ torch.diag(d) @ q2
        signs = torch.where(torch.rand(r, generator=gen) < 0.5, -1.0, 1.0).double()
        mix = mix * signs
        down = mix @ w.down.double()
        up = w.up.double() @ torch.linalg.inv(mix) / alpha_factor
        out[name] = LoraModule(down, up, w.alpha * alpha_factor)
    return LoraFile(out)


dims = st.integers(min_value=2, max_value=12)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    d_in=dims,
    d_out=dims,
    rank=st.integers(1, 4),
    alpha_factor=st.sampled_from([0.25, 1.0, 3.0, 16.0]),
)
def test_any_reparametrisation_gives_the_same_vector(seed, d_in, d_out, rank, alpha_factor):
    rank = min(rank, d_in, d_out)
    lora = _well_separated_lora(seed, d_in, d_out, rank)
    other = _reparametrise(lora, seed, alpha_factor)
    layout = lora.layout()
    v1, v2 = flatten(lora, layout), flatten(other, layout)
    torch.testing.assert_close(v2, v1, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    d_in=dims,
    d_out=dims,
    rank=st.integers(1, 5),
    alpha=st.floats(0.1, 64),
)
def test_unflatten_flatten_reproduces_the_update(seed, d_in, d_out, rank, alpha):
    gen = torch.Generator().manual_seed(seed)
    lora = LoraFile(
        {
            m: LoraModule(
                torch.randn(rank, d_in, generator=gen),
                torch.randn(d_out, rank, generator=gen),
                alpha,
            )
            for m in MODULES
        }
    )
    layout = lora.layout()
    back = unflatten(flatten(lora, layout), layout)
    for name, w in lora.modules.items():
        want = w.delta()
        got = back.modules[name].delta()
        assert (got - want).norm() <= 1e-5 * want.norm()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rank=st.integers(1, 3))
def test_same_update_in_all_three_formats_gives_the_same_vector(tmp_path_factory, seed, rank):
    folder = tmp_path_factory.mktemp("fmt")
    lora = _well_separated_lora(seed, 8, 6, rank)
    lora = LoraFile(
        {m: LoraModule(w.down.float(), w.up.float(), 2.0 * rank) for m, w in lora.modules.items()}
    )
    layout = lora.layout()
    paths = [
        write_lora(folder / f"{fmt}.safetensors", lora, to=fmt) for fmt in ("diffusers", "kohya")
    ]
    peft = folder / "peft" / "adapter_model.safetensors"
    peft.parent.mkdir()
    save_file(
        {
            f"base_model.model.{m}.lora_{ab}.weight": t.contiguous()
            for m, w in lora.modules.items()
            for ab, t in (("A", w.down), ("B", w.up))
        },
        str(peft),
    )
    (peft.parent / "adapter_config.json").write_text(
        json.dumps({"r": rank, "lora_alpha": 2.0 * rank})
    )
    vectors = [flatten(read_lora(p), layout) for p in [*paths, peft]]
    for v in vectors[1:]:
        torch.testing.assert_close(v, vectors[0], rtol=1e-5, atol=1e-5)


def test_golden_rank_one():
    # dW = [[0, 0], [-6, -8]] = sigma u v^T with sigma = 10; B' gets its big entry positive.
    lora = LoraFile(
        {MODULES[0]: LoraModule(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0], [-2.0]]), 1.0)}
    )
    root = math.sqrt(10)
    expected = torch.tensor([-0.6 * root, -0.8 * root, 0.0, root])
    torch.testing.assert_close(flatten(lora), expected)


def test_golden_rank_two_uses_svd():
    # dW = diag(3, 2) from skewed factors: A' = B' = diag(sqrt 3, sqrt 2).
    down = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    up = torch.tensor([[1.5, 0.0], [0.0, 4.0]])
    lora = LoraFile({MODULES[0]: LoraModule(down, up, 2.0)})
    r3, r2 = math.sqrt(3), math.sqrt(2)
    expected = torch.tensor([r3, 0, 0, r2, r3, 0, 0, r2])
    torch.testing.assert_close(flatten(lora), expected)


def test_lower_rank_is_zero_padded():
    layout = LoraLayout.from_shapes({MODULES[0]: (5, 4, 3)})
    lora = _well_separated_lora(0, 5, 4, 1)
    lora = LoraFile({MODULES[0]: lora.modules[MODULES[0]]})
    vector = flatten(lora, layout)
    a = vector[:15].reshape(3, 5)
    b = vector[15:].reshape(4, 3)
    assert a[1:].abs().max() == 0 and b[:, 1:].abs().max() == 0
    torch.testing.assert_close(b @ a, lora.modules[MODULES[0]].delta().float())


def test_zero_update_is_the_zero_vector():
    lora = LoraFile({MODULES[0]: LoraModule(torch.zeros(2, 4), torch.randn(3, 2), 2.0)})
    assert flatten(lora).abs().max() == 0


def test_batch_equals_one_by_one(tiny_unet):
    layout = LoraLayout.from_unet(tiny_unet, "attn", 2)
    loras = [random_lora(layout, seed=s) for s in range(3)] + [random_lora(layout, seed=9, rank=1)]
    batch = flatten_batch(loras, layout)
    for i, lora in enumerate(loras):
        torch.testing.assert_close(batch[i], flatten(lora, layout))


def test_unflatten_rejects_wrong_length_and_nan():
    layout = LoraLayout.from_shapes({MODULES[0]: (5, 4, 1)})
    with pytest.raises(LorasynthError, match="needs 9"):
        unflatten(torch.zeros(8), layout)
    with pytest.raises(LorasynthError, match="NaN"):
        unflatten(torch.full((9,), float("nan")), layout)

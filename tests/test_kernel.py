from __future__ import annotations

import torch

from lorasynth.kernel import KernelConfig, KernelRegression
from tests.test_lincomb import _bank as lincomb_bank


def _bank(rows=40):
    return lincomb_bank(rows=rows)


def test_with_little_ridge_a_bank_subject_gets_its_own_lora_back():
    embeddings, vectors, mean = _bank()
    kr = KernelRegression(embeddings, KernelConfig(bandwidth=0.2, ridge=1e-6))
    out = kr.vectors(embeddings[[3, 17]], lambda w: w @ vectors, mean)
    torch.testing.assert_close(out, vectors[[3, 17]], atol=1e-3, rtol=1e-3)


def test_a_far_condition_falls_back_to_the_bank_mean():
    embeddings, vectors, mean = _bank()
    kr = KernelRegression(embeddings, KernelConfig(bandwidth=0.01))
    far = -embeddings.mean(0, keepdim=True)  # opposite the bank: every kernel value ~ 0
    torch.testing.assert_close(kr.vectors(far, lambda w: w @ vectors, mean)[0], mean)


def test_a_large_bank_answers_from_each_querys_neighbours():
    """Past `neighbours` subjects each query solves on its nearest ones; with a narrow kernel
    the far subjects carry no weight, so the answer matches the whole bank's."""
    embeddings, _, _ = _bank(rows=60)
    cond = embeddings[:5] + 0.05
    whole = KernelRegression(embeddings, KernelConfig(bandwidth=0.05))
    local = KernelRegression(
        embeddings, KernelConfig(bandwidth=0.05, whole_bank_max=50, neighbours=30)
    )
    w_local = local.weights(cond)
    assert ((w_local != 0).sum(dim=1) <= 30).all()
    torch.testing.assert_close(w_local, whole.weights(cond), atol=1e-3, rtol=0)


def test_the_weighted_sum_of_aligned_rows_folds_the_flips_into_the_weights():
    """Normaliser.aligned_sum gives weights @ align(rows) without flipping the rows."""
    from lorasynth.bank import Normaliser

    offsets = torch.tensor([0, 4, 9, 20])
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(20, generator=gen)
    flips = torch.where(torch.rand(30, 3, generator=gen) < 0.5, -1.0, 1.0)
    vectors = (base + 0.3 * torch.randn(30, 20, generator=gen)) * flips[
        :, [0] * 4 + [1] * 5 + [2] * 11
    ]
    norm = Normaliser.fit([vectors], "layout", offsets)
    weights = torch.randn(2, 30, generator=gen)
    signs = norm.block_signs(vectors)
    assert signs.shape == (30, 3) and set(signs.unique().tolist()) <= {-1.0, 1.0}
    expected = weights @ norm.align(vectors)
    torch.testing.assert_close(norm.aligned_sum(weights, vectors, signs), expected)
    plain = Normaliser.fit([vectors], "layout")  # no alignment: the plain product
    torch.testing.assert_close(
        plain.aligned_sum(weights, vectors, plain.block_signs(vectors)), weights @ vectors
    )

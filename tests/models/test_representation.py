"""The ridge representation keeps the directions a condition predicts, not the loudest ones."""

from __future__ import annotations

import pytest
import torch

from lorasynth.errors import LorasynthError
from lorasynth.models.representation import PcaRepresentation, RidgeRepresentation


def _data(rows=2000, emb=4, dim=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cond = torch.nn.functional.normalize(torch.randn(rows, emb, generator=gen), dim=-1)
    predicted = cond @ torch.randn(emb, dim, generator=gen)  # rank `emb`, driven by cond
    # Louder, condition-independent variance along a few other directions.
    loud = torch.randn(rows, 3, generator=gen) @ torch.randn(3, dim, generator=gen) * 3
    return cond, predicted + loud, predicted


def test_ridge_basis_spans_what_the_condition_predicts_and_pca_does_not():
    cond, z, predicted = _data()
    ridge = RidgeRepresentation.fit_predictable(z, cond, 4)
    pca = PcaRepresentation.fit(z, 4)
    assert torch.allclose(ridge.components @ ridge.components.T, torch.eye(4), atol=1e-5)
    assert ridge.id.startswith("ridge:") and pca.id.startswith("pca:")

    def kept(rep):  # share of the predictable part's variance inside the basis
        centred = predicted - predicted.mean(0)
        return float(((centred @ rep.components.T) ** 2).sum() / (centred**2).sum())

    assert kept(ridge) > 0.9 and kept(pca) < 0.7
    torch.testing.assert_close(ridge.decode(ridge.encode(z)).mean(0), z.mean(0))


def test_past_the_embedding_the_basis_adds_what_the_fit_leaves():
    cond, z, _ = _data(emb=4)
    four = RidgeRepresentation.fit_predictable(z, cond, 4)
    seven = RidgeRepresentation.fit_predictable(z, cond, 7)
    assert torch.allclose(seven.components @ seven.components.T, torch.eye(7), atol=1e-5)
    torch.testing.assert_close(seven.components[:4], four.components)  # ridge first

    # the 3 added directions hold the condition-independent ("loud") variance: with them
    # the basis reconstructs z, which the 4 predictable ones cannot
    def error(rep):
        return float((rep.decode(rep.encode(z)) - z).pow(2).mean())

    assert error(seven) < 1e-6 < error(four)
    assert torch.equal(RidgeRepresentation.fit_predictable(z, cond, 7).components, seven.components)
    with pytest.raises(LorasynthError, match="ridge dimension 31"):
        RidgeRepresentation.fit_predictable(z, cond, 31)

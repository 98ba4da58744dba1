from __future__ import annotations

import math

import numpy as np
import torch

from lorasynth.evaluate.metrics import (
    mean_ci95,
    normalised_fidelity,
    reference_embedding,
    top1_identification,
)


def test_mean_ci95():
    mean, ci = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and math.isclose(ci, 1.96 * 1.2909944 / 2, rel_tol=1e-6)
    assert mean_ci95([5.0]) == (5.0, 0.0)


def test_normalised_fidelity_anchors():
    assert normalised_fidelity(0.2, 0.2, 0.8) == 0.0
    assert normalised_fidelity(0.8, 0.2, 0.8) == 1.0
    assert math.isnan(normalised_fidelity(0.5, 0.3, 0.3))


def test_top1_catches_a_shuffled_method():
    gen = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(100, 32, generator=gen), dim=-1)
    subject = torch.arange(100)
    faithful = torch.nn.functional.normalize(
        gallery + 0.1 * torch.randn(100, 32, generator=gen), dim=-1
    )
    assert top1_identification(faithful, subject, gallery).mean() > 0.95
    shuffled = faithful.roll(1, dims=0)
    assert top1_identification(shuffled, subject, gallery).mean() < 0.05


def test_top1_among_a_fixed_number_of_subjects_at_any_gallery_size():
    gallery = torch.eye(5)
    subject = torch.tensor([0, 4])
    # Subject 0 looks most like row 1 (one of its size-1 rivals); subject 4 most like row 3,
    # which is not among its rivals (rows 0 and 1) when identification is among 3 subjects.
    generated = torch.stack(
        [0.5 * gallery[0] + 0.9 * gallery[1], 0.5 * gallery[4] + 0.9 * gallery[3]]
    )
    assert top1_identification(generated, subject, gallery).tolist() == [0.0, 0.0]
    assert top1_identification(generated, subject, gallery, size=3).tolist() == [0.0, 1.0]
    assert top1_identification(generated, subject, gallery, size=5).tolist() == [0.0, 0.0]


def test_reference_embedding_is_unit_mean():
    ref = reference_embedding(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    torch.testing.assert_close(ref, torch.tensor([[2**-0.5, 2**-0.5]]))


def test_attribute_error_scores_only_the_informative_columns():
    from lorasynth.evaluate.run import attribute_error

    truth = np.zeros((4, 3))
    predicted = np.array([[1.0, 0.0, 9.0]] * 4)  # column 2 is uninformative noise
    assert attribute_error(predicted, truth, [0, 1], identities=2).tolist() == [0.5, 0.5]
    assert attribute_error(predicted, truth, [0, 1, 2], identities=2).tolist() == [10 / 3] * 2


def test_report_rows_in_one_order_whatever_the_dict_order():
    from lorasynth.evaluate.report import table

    rows = {name: {"id_sim_mean": 0.1} for name in ("trained", "diffusion-x0", "nearest", "base")}
    rows["diffusion"] = {"id_sim_mean": 0.2}
    rows["shuffled"] = {"id_sim_mean": 0.0}
    names = [line.split("|")[1].strip() for line in table(rows).splitlines()[2:]]
    assert names == ["base", "nearest", "diffusion", "diffusion-x0", "trained", "shuffled"]

"""5-point alignment: the similarity transform and the warp against scikit-image's."""

from __future__ import annotations

import numpy as np
import pytest

from lorasynth.errors import LorasynthError
from lorasynth.faces.align import (
    ARCFACE_TEMPLATE,
    align_face,
    similarity_transform,
    warp_affine,
)
from tests.faces.conftest import astronaut


def similarity(scale: float, angle: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_recovers_an_exact_similarity():
    truth = similarity(2.7, 0.4, (120.0, -35.0))
    landmarks = apply(truth, ARCFACE_TEMPLATE)  # a face 2.7x the template, turned 23 degrees
    back = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(apply(back, landmarks), ARCFACE_TEMPLATE, atol=1e-9)
    np.testing.assert_allclose(
        back @ np.vstack([truth, [0, 0, 1]]), similarity(1, 0, (0, 0)), atol=1e-9
    )


def test_matches_scikit_image_least_squares():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(0)
    for _ in range(5):
        landmarks = apply(
            similarity(rng.uniform(0.5, 4), rng.uniform(-1, 1), rng.uniform(0, 300, 2)),
            ARCFACE_TEMPLATE,
        )
        landmarks = landmarks + rng.normal(0, 2.0, landmarks.shape)  # detector noise
        reference = SimilarityTransform.from_estimate(landmarks, ARCFACE_TEMPLATE).params[:2]
        np.testing.assert_allclose(
            similarity_transform(landmarks, ARCFACE_TEMPLATE), reference, atol=1e-9
        )


def test_a_mirrored_face_is_not_fitted_by_a_reflection():
    mirrored = ARCFACE_TEMPLATE * [-1, 1] + [112, 0]  # left and right swapped
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_warp_puts_each_landmark_on_its_template_point():
    # Five bright dots on a dark photo at a rotated, scaled, shifted face's landmarks.
    landmarks = apply(similarity(1.9, -0.3, (140.0, 90.0)), ARCFACE_TEMPLATE)
    image = np.zeros((400, 400, 3), np.uint8)
    for x, y in np.rint(landmarks).astype(int):
        image[y - 2 : y + 3, x - 2 : x + 3] = 255
    crop = align_face(image, landmarks)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for x, y in ARCFACE_TEMPLATE:
        patch = crop[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5, 0].astype(float)
        ys, xs = np.mgrid[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5]
        centre = np.array([(xs * patch).sum(), (ys * patch).sum()]) / patch.sum()
        assert np.abs(centre - [x, y]).max() < 1.0


def test_warp_matches_scikit_image_warp():
    from skimage.transform import SimilarityTransform, warp

    image = astronaut()
    landmarks = apply(similarity(0.8, 0.2, (190.0, 95.0)), ARCFACE_TEMPLATE)
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    ours = warp_affine(image, matrix, 112).astype(float)
    tform = SimilarityTransform(matrix=np.vstack([matrix, [0, 0, 1]]))
    reference = warp(image, tform.inverse, output_shape=(112, 112), order=1, preserve_range=True)
    assert np.abs(ours - reference).mean() < 1.0  # rounding to uint8
    assert align_face(image, landmarks, size=224).shape == (224, 224, 3)


def test_bad_landmarks():
    with pytest.raises(LorasynthError, match="one point"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(LorasynthError, match="NaN"):
        similarity_transform(np.full((5, 2), np.nan), ARCFACE_TEMPLATE)
    with pytest.raises(LorasynthError, match=r"\(K, 2\)"):
        similarity_transform(np.ones((4, 2)), ARCFACE_TEMPLATE)

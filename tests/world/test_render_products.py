"""The mini-world product renderer: determinism, subject vs nuisance, distinguishability, speed."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from lorasynth.errors import LorasynthError
from lorasynth.world.attributes import BACKGROUNDS
from lorasynth.world.products import (
    PRODUCT_ATTRIBUTE_NAMES,
    TILT_THRESHOLD_DEG,
    ProductAttributes,
    ProductNuisance,
    product_attributes,
    product_caption,
    product_nuisance_rng,
    sample_product_nuisance,
)
from lorasynth.world.prompt_fidelity import prompt_fidelity
from lorasynth.world.render_products import (
    render_product,
    render_product_identity,
    render_products,
)

SEEDS = [0, 1, -1, 7, 2**40, -(2**63), 10**30]


def rms(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2)))


def test_attributes_are_a_deterministic_function_of_any_int_seed():
    assert len(PRODUCT_ATTRIBUTE_NAMES) >= 12
    vectors = []
    for seed in SEEDS:
        attrs = product_attributes(seed)
        assert attrs == product_attributes(seed)
        vec = attrs.as_vector()
        assert ((vec >= 0) & (vec <= 1)).all()
        assert ProductAttributes.from_vector(vec) == attrs
        assert ProductAttributes.from_dict(attrs.to_dict()) == attrs
        vectors.append(vec)
    assert len({v.tobytes() for v in vectors}) == len(SEEDS)


def test_product_streams_are_independent_of_face_streams():
    from lorasynth.world.attributes import identity_rng

    assert not np.allclose(
        product_attributes(3).as_vector()[:5],
        identity_rng(3).random(len(PRODUCT_ATTRIBUTE_NAMES))[:5],
    )


def test_rendering_is_deterministic_and_well_formed():
    attrs, nu = product_attributes(5), sample_product_nuisance(product_nuisance_rng(5))
    a = render_product(attrs, nu)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_product(attrs, nu))
    assert render_product(attrs, nu, size=64).shape == (64, 64, 3)
    images = [im for im, _ in render_product_identity(9, 3, 2)]
    assert all(
        np.array_equal(x, y)
        for x, y in zip(images, [im for im, _ in render_product_identity(9, 3, 2)], strict=True)
    )
    assert np.array_equal(render_products([attrs], [nu])[0], a)


def test_nuisances_change_pixels_not_the_subject():
    seed = 11
    shots = render_product_identity(seed, 6, nuisance_seed=4)
    for i in range(1, len(shots)):
        assert rms(shots[0][0], shots[i][0]) > 2.0
    # Nuisance draws never touch the subject's attributes.
    before = product_attributes(seed)
    rng = product_nuisance_rng(seed, 4)
    for _ in range(50):
        sample_product_nuisance(rng)
    assert product_attributes(seed) == before
    # Each nuisance alone moves pixels.
    base = ProductNuisance()
    attrs = product_attributes(seed)
    neutral = render_product(attrs, base)
    for change in (
        {"roll_deg": 15.0},
        {"offset_x": 0.1},
        {"scale": 1.2},
        {"light_strength": 0.9},
        {"background": "blue"},
        {"table": True},
        {"mirrored": True},
    ):
        assert rms(neutral, render_product(attrs, dataclasses.replace(base, **change))) > 1.0, (
            change
        )


def test_each_attribute_changes_the_image():
    middle = ProductAttributes.from_vector(np.full(len(PRODUCT_ATTRIBUTE_NAMES), 0.55))
    nu = ProductNuisance(light_strength=0.5)
    ref = render_product(middle, nu)
    for name in PRODUCT_ATTRIBUTE_NAMES:
        moved = render_product(dataclasses.replace(middle, **{name: 0.95}), nu)
        if name in ("pattern_frequency", "pattern_angle") and middle.pattern == "plain":
            continue
        assert rms(ref, moved) > 0.5, name


def test_distinct_seeds_differ_more_than_nuisances_of_one_seed():
    nu = ProductNuisance()
    images = np.stack([render_product(product_attributes(s), nu) for s in range(300)])
    flat = images.reshape(len(images), -1).astype(np.float32)
    d = ((flat[:, None] - flat[None]) ** 2).mean(-1) ** 0.5
    d[np.diag_indices(len(d))] = np.inf
    assert d.min() > 3.0  # no two of 300 subjects render alike under the same nuisance
    assert len({im.tobytes() for im in images}) == len(images)


def test_background_is_read_exactly_from_the_border():
    images, names = [], []
    for s in range(400):
        for im, nu in render_product_identity(s, 2, 7):
            images.append(im)
            names.append(nu.background)
    assert prompt_fidelity(np.stack(images), names) == 1.0
    assert set(names) <= set(BACKGROUNDS)


def test_captions_name_the_nuisances():
    assert (
        product_caption(ProductNuisance(background="blue"))
        == "a photo of a product, blue background"
    )
    nu = ProductNuisance(roll_deg=-(TILT_THRESHOLD_DEG + 5), table=True, background="red")
    assert product_caption(nu, subject="a photo of sks product") == (
        "a photo of sks product, tilted left, on a table, red background"
    )
    rolls = [sample_product_nuisance(product_nuisance_rng(1, k)).roll_deg for k in range(300)]
    assert all(abs(abs(r) - TILT_THRESHOLD_DEG) > 2 for r in rolls)  # never near the threshold


def test_bad_inputs_are_refused():
    with pytest.raises(LorasynthError, match="body_height"):
        ProductAttributes.from_vector(np.full(len(PRODUCT_ATTRIBUTE_NAMES), 1.5))
    with pytest.raises(LorasynthError, match="background"):
        ProductNuisance(background="mauve")
    with pytest.raises(LorasynthError, match="image size"):
        render_product(product_attributes(0), ProductNuisance(), size=8)
    with pytest.raises(LorasynthError, match="integer"):
        product_attributes(1.5)


def test_rendering_is_fast():
    attrs, nu = product_attributes(2), ProductNuisance(table=True, light_strength=0.7)
    render_product(attrs, nu)
    start = time.perf_counter()
    for _ in range(200):
        render_product(attrs, nu)
    per_image = (time.perf_counter() - start) / 200
    assert per_image < 0.005  # ~0.4 ms on the project's CPU; generous for loaded machines

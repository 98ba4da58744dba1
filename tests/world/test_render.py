"""The mini-world face renderer: determinism, identity vs nuisance, distinguishability."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lorasynth.errors import LorasynthError
from lorasynth.world.attributes import (
    ATTRIBUTE_NAMES,
    BACKGROUNDS,
    EYES_CLOSED_THRESHOLD,
    SMILE_THRESHOLD,
    TURNED_THRESHOLD,
    IdentityAttributes,
    Nuisance,
    caption,
    identity_attributes,
    nuisance_rng,
    sample_nuisance,
)
from lorasynth.world.render import (
    _face_params,
    _render,
    render_face,
    render_faces,
    render_identity,
)

SEEDS = [0, 1, -1, 7, 2**40, -(2**63), 10**30]


def rms(x: np.ndarray, y: np.ndarray) -> float:
    """Root-mean-square difference in grey levels."""
    return float(np.sqrt(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2)))


def middle(value: float = 0.5) -> IdentityAttributes:
    return IdentityAttributes.from_vector(np.full(len(ATTRIBUTE_NAMES), value))


def test_attributes_are_a_deterministic_function_of_any_int_seed():
    assert len(ATTRIBUTE_NAMES) >= 12
    vectors = []
    for seed in SEEDS:
        attrs = identity_attributes(seed)
        assert attrs == identity_attributes(seed)
        vec = attrs.as_vector()
        assert vec.shape == (len(ATTRIBUTE_NAMES),) and ((vec >= 0) & (vec <= 1)).all()
        assert list(attrs.to_dict()) == list(ATTRIBUTE_NAMES)
        assert IdentityAttributes.from_vector(vec) == attrs
        assert IdentityAttributes.from_dict(attrs.to_dict()) == attrs
        vectors.append(vec)
    # Distinct seeds (1 and -1 included) are distinct identities.
    assert len({v.tobytes() for v in vectors}) == len(SEEDS)
    assert identity_attributes(np.int64(7)) == identity_attributes(7)


def test_attribute_stream_is_pinned():
    # Golden values: the identities of a shipped mini-world must not drift between releases.
    assert identity_attributes(0).as_vector()[:3].tolist() == pytest.approx(
        [0.8506918461105564, 0.9146462422514877, 0.6510363800191615], abs=1e-15
    )
    assert identity_attributes(-1).head_width == pytest.approx(0.5902213846635681, abs=1e-15)


@pytest.mark.parametrize("bad", [True, 1.5, "3", None])
def test_non_integer_seeds_are_refused(bad):
    with pytest.raises(LorasynthError, match="integer"):
        identity_attributes(bad)


def test_out_of_range_attributes_and_nuisances_are_refused():
    with pytest.raises(LorasynthError, match="head_width"):
        dataclasses.replace(middle(), head_width=1.2)
    with pytest.raises(LorasynthError, match="unknown"):
        IdentityAttributes.from_dict({**middle().to_dict(), "tail": 0.5})
    with pytest.raises(LorasynthError, match="background"):
        Nuisance(background="magenta")
    with pytest.raises(LorasynthError, match="yaw"):
        Nuisance(yaw=2.0)
    with pytest.raises(LorasynthError, match="glasses"):
        Nuisance(glasses="yes")
    assert Nuisance(smile=np.float32(0.5)).smile == 0.5
    with pytest.raises(LorasynthError, match="size"):
        render_face(middle(), Nuisance.neutral(), size=8)
    with pytest.raises(LorasynthError, match="positive"):
        render_identity(3, 0)


def test_same_identity_and_nuisance_seed_give_the_same_bytes():
    first = render_identity(2**40, 5, nuisance_seed=3)
    second = render_identity(2**40, 5, nuisance_seed=3)
    for (img_a, nu_a), (img_b, nu_b) in zip(first, second, strict=True):
        assert img_a.shape == (32, 32, 3) and img_a.dtype == np.uint8
        assert img_a.tobytes() == img_b.tobytes() and nu_a == nu_b
    other = render_identity(2**40, 5, nuisance_seed=4)
    assert [nu for _, nu in other] != [nu for _, nu in first]
    # A batch renders each face exactly as it renders alone.
    attrs = [identity_attributes(s) for s in SEEDS[:4]]
    nuisances = [nu for _, nu in first[:4]]
    batch = render_faces(attrs, nuisances, size=48)
    for i in range(4):
        np.testing.assert_array_equal(batch[i], render_face(attrs[i], nuisances[i], size=48))


def test_nuisances_never_change_who_the_face_is():
    assert not set(ATTRIBUTE_NAMES) & {f.name for f in dataclasses.fields(Nuisance)}
    seed = -12345
    attrs = identity_attributes(seed)
    for nuisance_seed in (0, 1, 99):
        for image, nuisance in render_identity(seed, 3, nuisance_seed=nuisance_seed):
            np.testing.assert_array_equal(image, render_face(attrs, nuisance))
    assert identity_attributes(seed) == attrs


@pytest.mark.parametrize("name", ATTRIBUTE_NAMES)
def test_every_attribute_changes_the_image(name):
    low = render_face(dataclasses.replace(middle(), **{name: 0.05}), Nuisance.neutral())
    high = render_face(dataclasses.replace(middle(), **{name: 0.95}), Nuisance.neutral())
    diff = np.abs(low.astype(int) - high.astype(int)).max(axis=-1)
    # Visible, not rounding: several pixels move by more than a few grey levels.
    assert (diff > 8).sum() >= 2 and diff.max() >= 14, (name, diff.max())


def test_every_nuisance_changes_the_image():
    attrs = identity_attributes(5)
    base = render_face(attrs, Nuisance.neutral())
    changes = {
        "yaw": 0.8,
        "roll_deg": 12.0,
        "offset_x": 0.08,
        "offset_y": -0.06,
        "scale": 1.15,
        "light_strength": 1.0,
        "brightness": 1.15,
        "smile": 1.0,
        "eye_openness": 0.0,
        "background": "blue",
        "glasses": True,
        "hat": True,
    }
    fields = {f.name for f in dataclasses.fields(Nuisance)} - {"light_angle_deg"}
    assert set(changes) == fields
    for name, value in changes.items():
        image = render_face(attrs, dataclasses.replace(Nuisance.neutral(), **{name: value}))
        assert rms(image, base) > 1.0, name


def test_distinct_identities_are_visibly_distinct():
    n = 2000
    images = render_faces([identity_attributes(s) for s in range(n)], [Nuisance.neutral()] * n)
    flat = images.reshape(n, -1).astype(np.float64)
    sq = (flat**2).sum(axis=1)
    dist2 = sq[:, None] + sq[None, :] - 2.0 * (flat @ flat.T)
    np.fill_diagonal(dist2, np.inf)
    i, j = np.unravel_index(np.argmin(dist2), dist2.shape)
    closest = rms(images[i], images[j])
    # uint8 rounding moves a render by under 0.5 grey levels RMS; the closest two of 2,000
    # identities must differ by several levels, like a visible change of one feature.
    assert closest > 3.0, (i, j, closest)
    nearest = np.sqrt(dist2.min(axis=1) / flat.shape[1])
    assert np.median(nearest) > 8.0


def test_identity_outweighs_a_mild_nuisance():
    # Re-lit, slightly tilted, faintly smiling renders still sit closest to their own
    # identity's neutral render: identity, not nuisance, dominates pixel distance.
    n = 300
    attrs = [identity_attributes(s) for s in range(n)]
    gallery = render_faces(attrs, [Nuisance.neutral()] * n).reshape(n, -1).astype(np.float64)
    mild = Nuisance(roll_deg=3.0, light_angle_deg=200.0, light_strength=0.5, brightness=1.1)
    probes = render_faces(attrs, [dataclasses.replace(mild, smile=0.25)] * n)
    probes = probes.reshape(n, -1).astype(np.float64)
    dist2 = (probes**2).sum(1)[:, None] + (gallery**2).sum(1)[None, :] - 2.0 * probes @ gallery.T
    assert (dist2.argmin(axis=1) == np.arange(n)).mean() >= 0.98


def test_windows_never_clip_a_drawing():
    # Small features are drawn only inside a window; drawing them on the full frame instead
    # must give the same bytes, also at extreme poses, sizes and attribute values.
    rng = nuisance_rng(0, 0)
    extreme = Nuisance(
        yaw=-1.0, roll_deg=-30.0, offset_x=0.25, offset_y=-0.25, scale=1.5, glasses=True, hat=True
    )
    cases = [(middle(0.0), extreme), (middle(1.0), dataclasses.replace(extreme, yaw=1.0))]
    cases += [(identity_attributes(s), sample_nuisance(rng)) for s in range(12)]
    cases += [
        (identity_attributes(s), dataclasses.replace(sample_nuisance(rng), glasses=True, hat=True))
        for s in range(12, 20)
    ]
    for size in (16, 32, 64):
        for attrs, nuisance in cases:
            params = _face_params(attrs, nuisance)
            np.testing.assert_array_equal(
                _render(params, size, windows=True), _render(params, size, windows=False)
            )


def test_sizes_keep_the_same_picture():
    attrs, nuisance = identity_attributes(3), Nuisance(smile=1.0, glasses=True)
    small = render_face(attrs, nuisance, size=32).astype(np.float64)
    big = render_face(attrs, nuisance, size=128).astype(np.float64)
    pooled = big.reshape(32, 4, 32, 4, 3).mean(axis=(1, 3))
    assert rms(pooled, small) < 6.0


def test_background_is_the_named_colour():
    rng = nuisance_rng(1, 0)
    seen = set()
    for s in range(200):
        nuisance = sample_nuisance(rng)
        image = render_face(identity_attributes(s), nuisance)
        corners = [tuple(image[0, 0]), tuple(image[0, -1])]
        assert tuple(BACKGROUNDS[nuisance.background]) in corners
        seen.add(nuisance.background)
    assert seen == set(BACKGROUNDS)


def test_captions():
    neutral = Nuisance.neutral()
    assert caption(neutral) == "a photo of a person, gray background"
    nuisance = Nuisance(smile=0.9, background="blue", glasses=True)
    assert caption(nuisance) == "a photo of a person, smiling, blue background, wearing glasses"
    assert caption(nuisance, subject="a photo of sks person").startswith("a photo of sks person, ")
    both = Nuisance(eye_openness=0.05, yaw=-0.8, background="teal", glasses=True, hat=True)
    assert caption(both) == (
        "a photo of a person, eyes closed, facing left, teal background, wearing glasses and a hat"
    )
    assert "facing right" in caption(Nuisance(yaw=0.7))
    assert "wearing a hat" in caption(Nuisance(hat=True))


def test_sampled_nuisances_are_varied_and_captions_unambiguous():
    rng = nuisance_rng(42, 0)
    sampled = [sample_nuisance(rng) for _ in range(600)]
    # Captioned quantities keep clear of their thresholds.
    assert min(abs(n.smile - SMILE_THRESHOLD) for n in sampled) > 0.05
    assert min(abs(n.eye_openness - EYES_CLOSED_THRESHOLD) for n in sampled) > 0.05
    assert min(abs(abs(n.yaw) - TURNED_THRESHOLD) for n in sampled) > 0.05
    for flag, low, high in (("glasses", 0.15, 0.35), ("hat", 0.1, 0.3)):
        assert low < np.mean([getattr(n, flag) for n in sampled]) < high
    assert 0.3 < np.mean(["smiling" in caption(n) for n in sampled]) < 0.7
    assert {n.background for n in sampled} == set(BACKGROUNDS)
    assert all(f"{n.background} background" in caption(n) for n in sampled)
    assert Nuisance.from_dict(sampled[0].to_dict()) == sampled[0]

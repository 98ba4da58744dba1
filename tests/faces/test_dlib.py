"""The `dlib` embedder on real photos: identity, several faces, small/blurry faces, no face."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lorasynth.errors import LorasynthError
from lorasynth.faces import FaceWarning, load_face_embedder, mean_embedding
from tests.faces.conftest import astronaut, grace_hopper, mirrored_closer

pytest.importorskip("dlib", reason="dlib-bin is not installed (make test installs it)")


@pytest.fixture(scope="module")
def dlib_embedder():
    try:
        return load_face_embedder("dlib")
    except LorasynthError as exc:  # face_recognition_models missing
        pytest.skip(str(exc))


def embed_one(embedder, photo, **kwargs) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FaceWarning)  # a clean photo gives no warning
        return embedder.embed([photo], **kwargs)[0]


def test_identity_and_shape(dlib_embedder):
    assert dlib_embedder.name == "dlib" and dlib_embedder.dim == 128
    prefix, digest = dlib_embedder.embedder_id.split("/")
    assert prefix == "dlib" and len(digest) == 16
    assert load_face_embedder("dlib").embedder_id == dlib_embedder.embedder_id  # stable
    emb = embed_one(dlib_embedder, astronaut())
    assert emb.shape == (128,) and emb.dtype == np.float32
    assert abs(float(np.linalg.norm(emb)) - 1) < 1e-5


def test_detects_the_astronaut_with_5_landmarks(dlib_embedder):
    faces = dlib_embedder.detect(astronaut())
    assert len(faces) == 1  # the weak hit on the suit's patch is below min_score
    face = faces[0]
    x0, y0, x1, _ = face.box
    assert 160 < x0 < 190 and 60 < y0 < 90 and 80 < face.side < 110
    assert face.landmarks.shape == (5, 2) and face.landmark_scheme == "dlib5"
    assert (face.landmarks[:, 0] > x0).all() and (face.landmarks[:, 0] < x1).all()


def test_same_person_scores_higher_than_different_people(dlib_embedder):
    eileen, grace = astronaut(), grace_hopper()
    box = tuple(round(v) for v in dlib_embedder.detect(eileen)[0].box)
    e1, e2 = (
        embed_one(dlib_embedder, eileen),
        embed_one(dlib_embedder, mirrored_closer(eileen, box)),
    )
    g = embed_one(dlib_embedder, grace)
    same, different = float(e1 @ e2), max(float(e1 @ g), float(e2 @ g))
    assert same > different + 0.05, (same, different)


def test_same_person_in_different_photos(dlib_embedder, face_recognition_photos):
    paths = {
        n: face_recognition_photos / f"{n}.jpg" for n in ("obama", "obama2", "obama3", "biden")
    }
    emb = {n: embed_one(dlib_embedder, p) for n, p in paths.items()}
    same = [
        float(emb[a] @ emb[b])
        for a, b in [("obama", "obama2"), ("obama", "obama3"), ("obama2", "obama3")]
    ]
    different = [float(emb[n] @ emb["biden"]) for n in ("obama", "obama2", "obama3")]
    assert min(same) > max(different) + 0.05, (same, different)


def test_several_faces_largest_by_default_index_to_choose(dlib_embedder):
    grace, eileen = grace_hopper(), astronaut()
    group = np.concatenate([grace[:512], eileen], axis=1)  # Grace's face is ~2x Eileen's
    with pytest.warns(FaceWarning, match=r"2 faces found .*using face 0 \(the largest\)"):
        largest = dlib_embedder.embed([group])[0]
    assert float(largest @ embed_one(dlib_embedder, grace)) > 0.97
    with pytest.warns(FaceWarning, match=r"2 faces found .*using face 1 \(--face-index 1\)"):
        second = dlib_embedder.embed([group], face_index=1)[0]
    assert float(second @ embed_one(dlib_embedder, eileen)) > 0.97
    with pytest.raises(LorasynthError, match=r"--face-index 2 but 2 face\(s\) found"):
        dlib_embedder.embed([group], face_index=2)


def test_no_face_is_an_error_naming_the_photo(dlib_embedder, tmp_path):
    from skimage import data

    path = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(path)
    with pytest.raises(LorasynthError, match=r"coffee\.png: no face found"):
        dlib_embedder.embed([astronaut(), path])


def test_small_and_blurry_faces_warn_with_the_measured_value(dlib_embedder):
    eileen, grace = astronaut(), grace_hopper()
    small = np.asarray(Image.fromarray(eileen).resize((210, 210), Image.Resampling.BILINEAR))
    [report] = dlib_embedder.analyse([small])  # the shrunk face is small and so also blurry
    assert any(
        re.search(r"the face is small \(3\dx3\d px, under 80 px\)", n) for n in report.warnings
    )
    blurry = np.asarray(Image.fromarray(grace).filter(ImageFilter.GaussianBlur(4)))
    with pytest.warns(FaceWarning, match=r"blurry \(variance of Laplacian \d+\.\d, under 60\)"):
        dlib_embedder.embed([blurry])
    [report] = dlib_embedder.analyse([grace])
    assert report.blur > 300 and report.warnings == []  # the sharp original


def test_exif_rotated_photo_is_found_upright(dlib_embedder, tmp_path):
    grace = grace_hopper()
    stored = np.ascontiguousarray(np.rot90(grace, k=1))  # stored sideways, as cameras do
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "sideways.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    emb = embed_one(dlib_embedder, path)
    assert float(emb @ embed_one(dlib_embedder, grace)) > 0.97


def test_several_photos_give_the_normalised_mean(dlib_embedder):
    eileen = astronaut()
    box = tuple(round(v) for v in dlib_embedder.detect(eileen)[0].box)
    photos = [eileen, mirrored_closer(eileen, box)]
    rows = dlib_embedder.embed(photos)
    mean = dlib_embedder.embed_mean(photos)
    np.testing.assert_allclose(mean, mean_embedding(rows), atol=1e-6)
    np.testing.assert_allclose(mean, (rows.sum(0) / np.linalg.norm(rows.sum(0))), atol=1e-6)

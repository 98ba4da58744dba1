"""The `arcface-onnx` embedder on ONNX models the test exports (buffalo_l's signatures)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from lorasynth.errors import LorasynthError
from lorasynth.faces import FaceWarning, load_face_embedder
from lorasynth.faces.align import ARCFACE_TEMPLATE

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package (dev extra)")

from tests.faces.onnx_models import draw_face, export_insightface_folder, face_photo


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_insightface_folder(tmp_path_factory.mktemp("buffalo_tiny"))


@pytest.fixture(scope="module")
def embedder(model_dir):
    return load_face_embedder("arcface-onnx", model_dir)


def quiet_embed(embedder, photos, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FaceWarning)  # the squares are "blurry" by design
        return embedder.embed(photos, **kwargs)


def test_exported_models_have_buffalo_l_signatures(model_dir):
    import onnxruntime as ort

    det = ort.InferenceSession(str(model_dir / "det_10g.onnx"))
    [inp] = det.get_inputs()
    assert (
        inp.name == "input.1"
        and inp.shape[:2] == [1, 3]
        and all(isinstance(v, str) for v in inp.shape[2:])
    )
    outs = det.run(None, {"input.1": np.zeros((1, 3, 640, 640), np.float32)})
    k = [80 * 80 * 2, 40 * 40 * 2, 20 * 20 * 2]
    assert [o.shape for o in outs] == [(n, c) for c in (1, 4, 10) for n in k]
    rec = ort.InferenceSession(str(model_dir / "w600k_r50.onnx"))
    assert rec.get_inputs()[0].shape[1:] == [3, 112, 112]
    assert rec.run(None, {"input.1": np.zeros((2, 3, 112, 112), np.float32)})[0].shape == (2, 512)


def test_detects_box_and_landmarks_in_photo_pixels(embedder):
    photo, box = face_photo(seed=1, width=1280, height=960, x=384, y=192, side=128)
    [face] = embedder.detect(photo)
    np.testing.assert_allclose(face.box, box, atol=1e-3)
    assert face.score > 0.9 and face.landmark_scheme == "arcface"
    expected = np.array(box[:2]) + ARCFACE_TEMPLATE / 112 * 128
    np.testing.assert_allclose(face.landmarks, expected, atol=1e-3)


def test_id_dim_and_unit_vectors(embedder, model_dir, tmp_path):
    assert embedder.name == "arcface-onnx" and embedder.dim == 512
    prefix, digest = embedder.embedder_id.split("/")
    assert prefix == "arcface-onnx" and len(digest) == 16
    photo, _ = face_photo(1, 1280, 960, 384, 192, 128)
    emb = quiet_embed(embedder, [photo])
    assert emb.shape == (1, 512) and abs(float(np.linalg.norm(emb)) - 1) < 1e-5
    # Other weights, other id: a prior trained with one refuses the other.
    other = export_insightface_folder(tmp_path / "other", recogniser_seed=1)
    assert load_face_embedder("arcface-onnx", other).embedder_id != embedder.embedder_id


def test_same_identity_across_photos_beats_different_identities(embedder):
    a1, _ = face_photo(1, 1280, 960, 384, 192, 128)  # scaled 0.5 into the detector
    a2, _ = face_photo(1, 640, 480, 64, 320, 64, background=90)  # other size, place, light
    a3, _ = face_photo(1, 1920, 1440, 960, 0, 192)
    b, _ = face_photo(2, 1280, 960, 384, 192, 128)
    e = quiet_embed(embedder, [a1, a2, a3, b])
    same = [float(e[0] @ e[1]), float(e[0] @ e[2])]
    assert min(same) > 0.99, same
    assert float(e[0] @ e[3]) < min(same) - 0.1


def test_several_faces_and_face_index(embedder):
    photo, _ = face_photo(1, 1280, 960, 128, 128, 128)
    draw_face(photo, 2, 768, 512, 128)
    alone = {
        s: quiet_embed(embedder, [face_photo(s, 1280, 960, 384, 192, 128)[0]])[0] for s in (1, 2)
    }
    [report] = embedder.analyse([photo])
    assert len(report.faces) == 2 and "2 faces found" in report.warnings[0]
    faces = embedder.detect(photo)
    assert len(faces) == 2
    picked = quiet_embed(embedder, [photo], face_index=1)[0]
    which = 1 if faces[1].box[0] < 400 else 2  # the order of equal-size faces is the detector's
    assert float(picked @ alone[which]) > 0.99


def test_no_face_is_an_error(embedder):
    grey = np.full((480, 640, 3), 128, np.uint8)
    with pytest.raises(LorasynthError, match=r"photo array \(480, 640, 3\): no face found"):
        embedder.embed([grey])


def test_model_folder_errors(tmp_path, model_dir):
    with pytest.raises(LorasynthError, match="needs --model-dir"):
        load_face_embedder("arcface-onnx")
    with pytest.raises(LorasynthError, match="no such model folder"):
        load_face_embedder("arcface-onnx", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LorasynthError, match=r"no \.onnx files"):
        load_face_embedder("arcface-onnx", tmp_path / "empty")
    only_det = tmp_path / "only_det"
    only_det.mkdir()
    shutil.copy(model_dir / "det_10g.onnx", only_det / "det_10g.onnx")
    with pytest.raises(LorasynthError, match=r"one SCRFD detector and one ArcFace recogniser"):
        load_face_embedder("arcface-onnx", only_det)
    renamed = tmp_path / "renamed"  # no insightface names: found by their signatures
    renamed.mkdir()
    shutil.copy(model_dir / "det_10g.onnx", renamed / "a.onnx")
    shutil.copy(model_dir / "w600k_r50.onnx", renamed / "b.onnx")
    assert load_face_embedder("arcface-onnx", renamed).dim == 512
    (renamed / "c.onnx").write_bytes(b"not onnx")
    with pytest.raises(LorasynthError, match=r"c\.onnx: not a loadable ONNX model"):
        load_face_embedder("arcface-onnx", renamed)

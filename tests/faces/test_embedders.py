"""The embedder protocol: face choice, quality warnings, means, ids, and synthesis wiring."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from lorasynth.errors import LorasynthError
from lorasynth.faces import (
    Face,
    FaceEmbedder,
    FaceWarning,
    as_face_embedder,
    load_face_embedder,
    mean_embedding,
)
from lorasynth.faces.embedders import (
    MiniFaceEmbedder,
    QualityLimits,
    choose_face,
    laplacian_variance,
    quality_notes,
    sort_faces,
)
from lorasynth.faces.mini import (
    EmbedderConfig,
    MiniEmbedder,
    embed_images,
    embedder_file,
    load_embedder,
    load_photo,
)
from lorasynth.world.render import render_identity
from tests.faces.conftest import astronaut, grace_hopper


def face(x: float, y: float, side: float, score: float = 0.9) -> Face:
    return Face((x, y, x + side, y + side), score)


def tiny_mini() -> MiniEmbedder:
    torch.manual_seed(0)
    model = MiniEmbedder(EmbedderConfig("tiny", "plain", (4, 8), (1, 1), 8)).eval()
    model.embedder_id = "tiny/0123456789abcdef"
    return model


def test_faces_are_sorted_largest_first_and_chosen():
    faces = sort_faces([face(0, 0, 50), face(100, 0, 120), face(300, 0, 80)])
    assert [f.side for f in faces] == [120, 80, 50]
    assert choose_face("p.jpg", faces[:1], None) == (0, [])
    index, notes = choose_face("p.jpg", faces, None)
    assert index == 0
    assert notes == [
        "p.jpg: 3 faces found (largest first: 120x120, 80x80, 50x50 px); using face 0 "
        "(the largest); choose another with --face-index K"
    ]
    assert choose_face("p.jpg", faces, 2)[0] == 2
    with pytest.raises(LorasynthError, match=r"p\.jpg: --face-index 3 but 3 face\(s\) found"):
        choose_face("p.jpg", faces, 3)
    with pytest.raises(LorasynthError, match=r"p\.jpg: no face found"):
        choose_face("p.jpg", [], None)


def test_quality_notes_state_the_measured_values():
    limits = QualityLimits(min_face_px=80, min_blur=60)
    assert quality_notes("p", face(0, 0, 100), 200.0, limits) == []
    small, blurry = quality_notes("p", face(0, 0, 41.6), 12.34, limits)
    assert "42x42 px, under 80 px" in small
    assert "variance of Laplacian 12.3, under 60" in blurry


def test_laplacian_variance_measures_sharpness():
    flat = np.full((112, 112, 3), 90, np.uint8)
    assert laplacian_variance(flat) == 0.0
    noise = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    sharp = laplacian_variance(noise)
    soft = laplacian_variance(
        np.asarray(Image.fromarray(noise).resize((28, 28)).resize((112, 112)))
    )
    assert sharp > 10 * soft > 0


def test_mean_embedding():
    rows = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(mean_embedding(rows), [2**-0.5, 2**-0.5], rtol=1e-6)
    with pytest.raises(LorasynthError, match="cancel out"):
        mean_embedding(np.array([[1.0, 0.0], [-1.0, 0.0]]))


def test_mini_adapter_is_the_mini_embedder(tmp_path):
    model = tiny_mini()
    adapter = as_face_embedder(model)
    assert isinstance(adapter, MiniFaceEmbedder) and isinstance(adapter, FaceEmbedder)
    assert (adapter.name, adapter.dim, adapter.embedder_id) == ("tiny", 8, model.embedder_id)
    paths = []
    for k, (image, _) in enumerate(render_identity(9_000_001, 3)):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(image).resize((48, 48)).save(paths[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # renders: no size or blur warnings
        got = adapter.embed(paths)
    expected = embed_images(model, np.stack([load_photo(p) for p in paths])).numpy()
    np.testing.assert_array_equal(got, expected)
    [report] = adapter.analyse(paths[:1])
    assert len(report.faces) == 1
    assert report.blur is None and report.face.box == (0.0, 0.0, 48.0, 48.0)


def test_shipped_mini_ids_are_unchanged():
    if not embedder_file("mini-arcface").is_file():
        pytest.skip("the shipped mini-world embedders are not in this checkout")
    for name in ("mini-arcface", "mini-eval"):
        assert load_face_embedder(name).embedder_id == load_embedder(name).embedder_id
        assert load_face_embedder(name).embedder_id.startswith(f"{name}/")


def test_load_errors(tmp_path):
    with pytest.raises(LorasynthError, match="unknown embedder 'magic'; choose one of"):
        load_face_embedder("magic")
    with pytest.raises(LorasynthError, match="--model-dir is for dlib and arcface-onnx"):
        load_face_embedder("mini-arcface", tmp_path)
    with pytest.raises(LorasynthError, match="not a face embedder"):
        as_face_embedder(object())


def test_dlib_model_dir_must_hold_the_5_point_model(tmp_path):
    pytest.importorskip("dlib")
    from lorasynth.faces.dlib_backend import default_model_dir

    (tmp_path / "shape_predictor_68_face_landmarks.dat").write_bytes(b"x")
    with pytest.raises(LorasynthError, match=r"missing dlib model file.*shape_predictor_5_face"):
        load_face_embedder("dlib", tmp_path)
    assert (default_model_dir() / "shape_predictor_5_face_landmarks.dat").is_file()


# ---- synthesis: the embedder named in the bank and prior is the one that must be used ----------
@pytest.fixture
def dlib_world(tmp_path):
    """The service tests' tiny world, its conditions re-labelled as dlib embeddings."""
    pytest.importorskip("dlib")
    from lorasynth.bank.conditions import CONDITIONS_FILE, ConditionTable
    from tests.service import tiny

    root = tiny.build(tmp_path)
    dlib = load_face_embedder("dlib")
    path = root / "bank" / CONDITIONS_FILE
    table = ConditionTable.load(path)
    rows = torch.nn.functional.normalize(
        torch.randn(len(table.ids), 2, 128, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    ConditionTable(table.ids, rows, dlib.embedder_id).save(path)
    return root, dlib


def test_synthesizer_embeds_with_dlib_and_passes_face_index(dlib_world, tmp_path):
    from lorasynth.lora.safetensors_io import load_tensors
    from lorasynth.synthesis import Synthesizer

    root, dlib = dlib_world
    synth = Synthesizer.load(bank=root / "bank", embedder="dlib")
    group = np.concatenate([grace_hopper()[:512], astronaut()], axis=1)
    with pytest.warns(FaceWarning, match="2 faces found"):
        cond0 = synth.embed([group])
    with pytest.warns(FaceWarning, match="using face 1"):
        cond1 = synth.embed([group], face_index=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FaceWarning)
        # The same face, found in another frame: the same person to dlib (cosine ~0.98).
        assert float(cond0.numpy() @ dlib.embed_mean([grace_hopper()])) > 0.95
        assert float(cond1.numpy() @ dlib.embed_mean([astronaut()])) > 0.95
        assert float(cond0 @ cond1) < 0.93
        out = tmp_path / "lora.safetensors"
        synth.synthesize([group], "nearest", out=out, face_index=1)
    _, meta = load_tensors(out)
    assert meta["lorasynth.embedder_id"] == dlib.embedder_id


def test_synthesizer_refuses_an_embedder_the_bank_was_not_built_with(dlib_world):
    from lorasynth.synthesis import Synthesizer

    root, dlib = dlib_world
    with pytest.raises(LorasynthError, match=f"embeddings come from '{dlib.embedder_id}'"):
        Synthesizer.load(bank=root / "bank", embedder=str(root / "embedder.safetensors"))


def test_synthesize_cli_passes_embedder_and_face_index(dlib_world, tmp_path):
    import json

    import typer
    from typer.testing import CliRunner

    from lorasynth.cli.synth import register

    root, _ = dlib_world
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    photo = tmp_path / "group.png"
    Image.fromarray(np.concatenate([grace_hopper()[:512], astronaut()], axis=1)).save(photo)
    out = tmp_path / "lora.safetensors"
    args = ["synthesize", str(photo), "--out", str(out), "--bank", str(root / "bank")]
    args += ["--embedder", "dlib", "--face-index", "1", "--method", "nearest", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == "nearest" and out.is_file()
    assert "warning: " in result.stderr and "using face 1 (--face-index 1)" in result.stderr

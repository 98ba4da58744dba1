"""`lorasynth embed PHOTO... --json`: one unit embedding per photo, in order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from lorasynth.cli.embed import register
from lorasynth.errors import LorasynthError
from lorasynth.faces.mini import (
    EmbedderConfig,
    MiniEmbedder,
    embed_images,
    load_embedder,
    save_embedder,
)
from lorasynth.world.render import render_identity

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _group() -> None:
        """Keeps `embed` a sub-command, as in the real app."""

    register(app)
    return app


@pytest.fixture
def embedder_path(tmp_path):
    torch.manual_seed(0)
    model = MiniEmbedder(EmbedderConfig("tiny", "plain", (4, 8), (1, 1), 8))
    path = tmp_path / "tiny.safetensors"
    save_embedder(model, path)
    return path


def write_photos(folder, seeds):
    paths = []
    for k, seed in enumerate(seeds):
        image = render_identity(seed, 1)[0][0]
        path = folder / f"{k}-{seed}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def test_json_has_one_unit_embedding_per_photo_in_order(app, tmp_path, embedder_path):
    paths = write_photos(tmp_path, [9_000_003, 9_000_001, 9_000_002])
    jpeg = tmp_path / "big.jpg"
    Image.open(paths[0]).resize((64, 64)).save(jpeg, quality=95)
    paths.append(jpeg)
    args = ["embed", *map(str, paths), "--embedder", str(embedder_path), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["path"] for row in rows] == [str(p) for p in paths]
    emb = torch.tensor([row["embedding"] for row in rows])
    assert emb.shape == (4, 8)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    expected = embed_images(
        load_embedder(embedder_path), np.stack([np.asarray(Image.open(p)) for p in paths[:3]])
    )
    torch.testing.assert_close(emb[:3], expected)


def test_plain_output_is_one_line_per_photo(app, tmp_path, embedder_path):
    paths = write_photos(tmp_path, [9_000_000, 9_000_001])
    result = CliRunner().invoke(app, ["embed", *map(str, paths), "--embedder", str(embedder_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in paths]
    assert len(lines[0].split("\t")[1].split()) == 8


@pytest.mark.parametrize("bad", ["missing.png", "text.png"])
def test_bad_photos_raise_a_lorasynth_error_naming_the_path(app, tmp_path, embedder_path, bad):
    good = write_photos(tmp_path, [9_000_000])[0]
    (tmp_path / "text.png").write_text("not an image")
    path = tmp_path / bad
    result = CliRunner().invoke(
        app, ["embed", str(good), str(path), "--embedder", str(embedder_path)]
    )
    assert isinstance(result.exception, LorasynthError)
    assert str(path) in str(result.exception)


def test_unknown_embedder_file_is_a_lorasynth_error(app, tmp_path):
    photo = write_photos(tmp_path, [9_000_000])[0]
    result = CliRunner().invoke(app, ["embed", str(photo), "--embedder", str(photo)])
    assert isinstance(result.exception, LorasynthError)


# ---- real photos: dlib and arcface-onnx ------------------------------------------------------
def real_photo_paths(folder):
    from tests.faces.conftest import astronaut, grace_hopper

    paths = {"astronaut": folder / "astronaut.png", "hopper": folder / "hopper.jpg"}
    Image.fromarray(astronaut()).save(paths["astronaut"])
    Image.fromarray(grace_hopper()).save(paths["hopper"], quality=95)
    group = np.concatenate([grace_hopper()[:512], astronaut()], axis=1)
    paths["group"] = folder / "group.png"
    Image.fromarray(group).save(paths["group"])
    return paths


@pytest.fixture
def dlib_ready():
    pytest.importorskip("dlib", reason="dlib-bin is not installed (make test installs it)")


def test_dlib_json_reports_faces_and_warnings(app, tmp_path, dlib_ready):
    paths = real_photo_paths(tmp_path)
    args = ["embed", str(paths["astronaut"]), str(paths["group"]), "--embedder", "dlib", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["faces_found"] for r in rows] == [1, 2]
    assert all(r["embedder_id"].startswith("dlib/") for r in rows)
    assert len(rows[0]["embedding"]) == 128 and rows[1]["face_index"] == 0
    assert rows[0]["face"]["landmark_scheme"] == "dlib5" and len(rows[0]["face"]["landmarks"]) == 5
    assert rows[1]["warnings"] and rows[0]["warnings"] == []
    warning_lines = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning_lines) == 1 and "2 faces found" in warning_lines[0]


def test_dlib_face_index_and_mean(app, tmp_path, dlib_ready):
    paths = real_photo_paths(tmp_path)

    def run(*extra):
        result = CliRunner().invoke(app, ["embed", *extra, "--embedder", "dlib", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    [second] = run(str(paths["group"]), "--face-index", "1")
    [alone] = run(str(paths["astronaut"]))
    assert np.dot(second["embedding"], alone["embedding"]) > 0.95
    mean = run(str(paths["astronaut"]), str(paths["hopper"]), "--mean")
    assert mean["paths"] == [str(paths["astronaut"]), str(paths["hopper"])]
    assert abs(np.linalg.norm(mean["embedding"]) - 1) < 1e-5
    result = CliRunner().invoke(
        app, ["embed", str(paths["astronaut"]), "--embedder", "dlib", "--face-index", "1"]
    )
    assert isinstance(result.exception, LorasynthError)
    assert "--face-index 1 but 1 face(s) found" in str(result.exception)


def test_arcface_onnx_needs_and_uses_model_dir(app, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from tests.faces.onnx_models import export_insightface_folder, face_photo

    photo = tmp_path / "face.png"
    Image.fromarray(face_photo(1, 1280, 960, 384, 192, 128)[0]).save(photo)
    result = CliRunner().invoke(app, ["embed", str(photo), "--embedder", "arcface-onnx"])
    assert isinstance(result.exception, LorasynthError) and "--model-dir" in str(result.exception)
    folder = export_insightface_folder(tmp_path / "buffalo")
    args = ["embed", str(photo), "--embedder", "arcface-onnx", "--model-dir", str(folder), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert len(row["embedding"]) == 512 and row["embedder_id"].startswith("arcface-onnx/")
    assert row["face"]["box"] == [384.0, 192.0, 512.0, 320.0]


# ---- domains ---------------------------------------------------------------------------------
def test_products_default_to_their_conditioning_embedder(app, tmp_path, tiny_products_world):
    from lorasynth.domains import PRODUCTS
    from lorasynth.world.render_products import render_product_identity

    images = [image for image, _ in render_product_identity(100_000, 2, 2)]
    paths = []
    for k, image in enumerate(images):
        paths.append(tmp_path / f"product-{k}.png")
        Image.fromarray(image).save(paths[-1])
    result = CliRunner().invoke(app, ["embed", *map(str, paths), "--domain", "products", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    model = load_embedder(PRODUCTS.embedder_path("mini-style"))
    assert all(row["embedder_id"] == model.embedder_id for row in rows)
    torch.testing.assert_close(
        torch.tensor([row["embedding"] for row in rows]), embed_images(model, np.stack(images))
    )
    # A faces embedder in the products domain is refused.
    faces = tmp_path / "mini-arcface.safetensors"
    save_embedder(MiniEmbedder(EmbedderConfig("mini-arcface", "plain", (4, 8), (1, 1), 8)), faces)
    args = ["embed", str(paths[0]), "--domain", "products", "--embedder", str(faces)]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, LorasynthError)
    assert "is domain 'faces' but --domain is domain 'products'" in str(result.exception)


def test_a_domain_not_built_names_the_stage(app, tmp_path, monkeypatch):
    monkeypatch.setenv("LORASYNTH_ASSETS", str(tmp_path / "assets"))
    photo = write_photos(tmp_path, [9_000_000])[0]
    result = CliRunner().invoke(app, ["embed", str(photo), "--domain", "products"])
    assert isinstance(result.exception, LorasynthError)
    assert "world build --domain products --stage embedders" in str(result.exception)

"""Mini-world embedders: shapes, unit norms, save/load round-trips and strict loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lorasynth.errors import LorasynthError
from lorasynth.faces.mini import (
    PRESETS,
    AttributeRegressor,
    EmbedderConfig,
    MiniEmbedder,
    RegressorConfig,
    count_parameters,
    embed_images,
    embedder_file,
    load_embedder,
    load_photo,
    load_regressor,
    predict_attributes,
    save_embedder,
    save_regressor,
)
from lorasynth.lora.safetensors_io import load_tensors, save_tensors
from lorasynth.world.attributes import ATTRIBUTE_NAMES
from lorasynth.world.render import render_identity

TINY = {
    "resnet": EmbedderConfig("tiny-res", "resnet", (4, 8), (1, 1), 16),
    "plain": EmbedderConfig("tiny-plain", "plain", (4, 8), (1, 2), 8),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(arch: str = "resnet", seed: int = 0) -> MiniEmbedder:
    torch.manual_seed(seed)
    return MiniEmbedder(TINY[arch]).eval()


def faces(n: int = 6, seed: int = 9_000_000) -> np.ndarray:
    return np.stack([image for image, _ in render_identity(seed, n)])


@pytest.mark.parametrize("arch", ["resnet", "plain"])
def test_embeddings_are_unit_vectors_of_the_configured_size(arch):
    emb = embed_images(tiny(arch), faces())
    assert emb.shape == (6, TINY[arch].embed_dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(6))


def test_uint8_float_batching_and_resizing_agree():
    model, images = tiny(), faces(5)
    emb = embed_images(model, images)
    torch.testing.assert_close(embed_images(model, torch.from_numpy(images)), emb)
    torch.testing.assert_close(embed_images(model, images.astype(np.float32) / 255.0), emb)
    torch.testing.assert_close(embed_images(model, images, batch_size=2), emb, atol=1e-5, rtol=0)
    torch.testing.assert_close(embed_images(model, images), emb, atol=0, rtol=0)  # deterministic
    big = embed_images(model, np.repeat(np.repeat(images, 2, axis=1), 2, axis=2))  # resized
    assert big.shape == emb.shape and float((big * emb).sum(1).min()) > 0.8
    assert embed_images(model, images[:0]).shape == (0, 16)
    with pytest.raises(LorasynthError, match="N, H, W, 3"):
        embed_images(model, images.transpose(0, 3, 1, 2))


def test_save_load_round_trip_gives_identical_embeddings(tmp_path):
    model, images = tiny("plain"), faces()
    path = tmp_path / "e.safetensors"
    embedder_id = save_embedder(model, path, {"note": "x"})
    name, digest = embedder_id.split("/")
    assert name == "tiny-plain" and len(digest) == 16 and model.embedder_id == embedder_id
    loaded = load_embedder(path)
    assert loaded.config == model.config and loaded.embedder_id == embedder_id
    assert not loaded.training
    torch.testing.assert_close(
        embed_images(loaded, images), embed_images(model, images), atol=0, rtol=0
    )
    _, meta = load_tensors(path)
    assert json.loads(meta["config"])["arch"] == "plain" and meta["embedder_id"] == embedder_id
    # Other weights, other id.
    assert save_embedder(tiny("plain", seed=1), tmp_path / "f.safetensors") != embedder_id


def test_names_resolve_to_the_assets_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASYNTH_ASSETS", str(tmp_path))
    path = embedder_file("mini-eval")
    assert path == tmp_path / "mini-world" / "embedders" / "mini-eval.safetensors"
    with pytest.raises(LorasynthError, match="train_embedders --name mini-eval"):
        load_embedder("mini-eval")
    save_embedder(tiny(), path)
    assert load_embedder("mini-eval").config == TINY["resnet"]


def test_wrong_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(LorasynthError, match=r"junk\.safetensors"):
        load_embedder(junk)
    with pytest.raises(LorasynthError, match="pickle"):
        load_embedder(tmp_path / "model.pt")
    with pytest.raises(LorasynthError, match="no such file"):
        load_embedder(tmp_path / "missing.safetensors")

    other = tmp_path / "other.safetensors"
    save_tensors(other, {"w": torch.zeros(2)}, {"kind": "something-else"})
    with pytest.raises(LorasynthError, match="not a lorasynth mini embedder"):
        load_embedder(other)

    path = tmp_path / "e.safetensors"
    save_embedder(tiny(), path)
    tensors, meta = load_tensors(path)
    tampered = dict(tensors)
    key = next(k for k in tensors if k.endswith("weight"))
    tampered[key] = tensors[key] + 1e-3
    save_tensors(path, tampered, meta)
    with pytest.raises(LorasynthError, match="does not match its weights"):
        load_embedder(path)

    save_tensors(path, {k: v for k, v in tensors.items() if k != key}, meta)
    with pytest.raises(LorasynthError, match="missing"):
        load_embedder(path)


def test_bad_configs_are_refused():
    with pytest.raises(LorasynthError, match="arch"):
        EmbedderConfig("x", "transformer", (4,), (1,), 8)
    with pytest.raises(LorasynthError, match="divisible"):
        EmbedderConfig("x", "resnet", (4, 4, 4, 4, 4, 4), (1,) * 6, 8)
    with pytest.raises(LorasynthError, match="unknown fields"):
        EmbedderConfig.from_dict({**TINY["plain"].to_dict(), "extra": 1})


def test_shipped_architectures_are_small_and_different():
    arc, ev = PRESETS["mini-arcface"], PRESETS["mini-eval"]
    assert arc.arch != ev.arch
    for cfg in (arc, ev):
        assert 4 * count_parameters(MiniEmbedder(cfg)) < 4_000_000  # float32 file under 4 MB


def test_regressor_round_trip_and_embedder_check(tmp_path):
    model = tiny()
    save_embedder(model, tmp_path / "e.safetensors")
    torch.manual_seed(0)
    regressor = AttributeRegressor(RegressorConfig(16, 8, ATTRIBUTE_NAMES, model.embedder_id))
    save_regressor(regressor, tmp_path / "r.safetensors")
    loaded = load_regressor(tmp_path / "r.safetensors")
    images = faces(3)
    pred = predict_attributes(loaded, model, images)
    assert pred.shape == (3, len(ATTRIBUTE_NAMES)) and bool(((pred >= 0) & (pred <= 1)).all())
    torch.testing.assert_close(pred, predict_attributes(regressor, model, images))
    with pytest.raises(LorasynthError, match="fitted on embedder"):
        predict_attributes(loaded, tiny(seed=3), images)
    with pytest.raises(LorasynthError, match="not a lorasynth attribute regressor"):
        load_regressor(tmp_path / "e.safetensors")


def test_load_photo(tmp_path):
    from PIL import Image

    image = faces(1)[0]
    Image.fromarray(image).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_photo(tmp_path / "a.png"), image)
    Image.fromarray(image).convert("L").resize((64, 48)).save(tmp_path / "b.jpg")
    assert load_photo(tmp_path / "b.jpg").shape == (32, 32, 3)
    (tmp_path / "c.png").write_bytes(b"no image here")
    with pytest.raises(LorasynthError, match=r"c\.png"):
        load_photo(tmp_path / "c.png")
    with pytest.raises(LorasynthError, match="no such photo"):
        load_photo(tmp_path / "missing.png")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mini-arcface", "mini-eval"])
def test_shipped_embedders_tell_identities_apart(name):
    if not embedder_file(name).is_file():
        pytest.skip(f"{embedder_file(name)} not built")
    model = load_embedder(name)
    seeds = range(9_500_000, 9_500_020)
    emb = torch.stack([embed_images(model, faces(2, seed)) for seed in seeds])  # (20, 2, D)
    genuine = (emb[:, 0] * emb[:, 1]).sum(1)
    impostor = emb[:, 0] @ emb[:, 1].T
    impostor = impostor[~torch.eye(20, dtype=torch.bool)]
    assert genuine.mean() > impostor.mean() + 0.3

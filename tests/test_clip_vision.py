"""The clip-vision condition encoder, on a tiny randomly initialised CLIP vision model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorasynth.conditions.clip_vision import ClipVisionEncoder
from lorasynth.errors import LorasynthError
from lorasynth.world.render_products import render_product_identity


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("clip")
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return folder


def photos(seed: int, n: int) -> list[np.ndarray]:
    return [im for im, _ in render_product_identity(seed, n, size=48)]


def test_embeddings_are_unit_vectors_matching_the_model(clip_dir):
    from transformers import CLIPVisionModelWithProjection

    enc = ClipVisionEncoder(clip_dir)
    assert enc.name == "clip-vision" and enc.dim == 16
    assert enc.embedder_id.startswith("clip-vision/") and len(enc.embedder_id) == 28
    images = photos(1, 3)
    emb = enc.embed(images)
    assert emb.shape == (3, 16) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(emb, enc.embed(images))  # deterministic
    # The same numbers as calling the model on CLIP-preprocessed pixels directly.
    model = CLIPVisionModelWithProjection.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        direct = model(pixel_values=enc.preprocess(images)).image_embeds
    assert np.allclose(emb, torch.nn.functional.normalize(direct, dim=-1).numpy(), atol=1e-5)
    mean = enc.embed_mean(images)
    assert mean.shape == (16,) and abs(np.linalg.norm(mean) - 1) < 1e-5
    assert len(enc.detect(images[0])) == 1


def test_photo_files_and_bytes_embed_like_arrays(clip_dir, tmp_path):
    from PIL import Image

    enc = ClipVisionEncoder(clip_dir)
    image = photos(2, 1)[0]
    path = tmp_path / "p.png"
    Image.fromarray(image).save(path)
    a = enc.embed([image])
    assert np.allclose(enc.embed([path]), a, atol=1e-6)
    assert np.allclose(enc.embed([path.read_bytes()]), a, atol=1e-6)


def test_the_id_names_the_weights_and_bad_folders_are_refused(clip_dir, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(1)
    other = tmp_path / "other"
    CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(clip_dir)).save_pretrained(other)
    assert ClipVisionEncoder(other).embedder_id != ClipVisionEncoder(clip_dir).embedder_id
    with pytest.raises(LorasynthError, match=r"no config\.json"):
        ClipVisionEncoder(tmp_path / "missing")
    (other / "model.safetensors").rename(other / "pytorch_model.bin")
    with pytest.raises(LorasynthError, match="pickles are refused"):
        ClipVisionEncoder(other)
    with pytest.raises(LorasynthError, match="at least one photo"):
        ClipVisionEncoder(clip_dir).embed([])

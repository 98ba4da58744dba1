"""`clip-vision`: CLIP image embeddings as the condition, for subjects that are not faces.

A style or a product has no face to detect or align; CLIP's projected image embedding (the
vector CLIP matches against text) describes it well enough to condition the prior on. The model
is a transformers `CLIPVisionModelWithProjection` folder the user supplies (config.json and
model.safetensors, e.g. from openai/clip-vit-large-patch14 saved with save_pretrained); nothing
is downloaded and pickled weights are refused.

The encoder follows the embedder protocol of `lorasynth.faces.embedders` (name, dim,
embedder_id, detect, embed, embed_mean): the whole photo is the subject, so detection returns
one region covering it. Preprocessing is CLIP's: resize the shorter side to the model's image
size (bicubic), centre crop, scale to [0, 1], normalise with the folder's
preprocessor_config.json mean/std (CLIP's defaults without one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lorasynth.errors import LorasynthError
from lorasynth.faces.embedders import Face, files_hash, mean_embedding, whole_image_face
from lorasynth.faces.photos import load_photo

NAME = "clip-vision"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PICKLES = ("pytorch_model.bin", "model.pt", "model.ckpt", "pytorch_model.bin.index.json")


def _load_image(photo) -> np.ndarray:
    """A path, encoded bytes or (H, W, 3) uint8 array -> (H, W, 3) uint8 RGB."""
    if isinstance(photo, np.ndarray):
        if photo.ndim != 3 or photo.shape[-1] != 3 or photo.dtype != np.uint8:
            raise LorasynthError(
                f"a photo array must be (H, W, 3) uint8 RGB, got {photo.shape} {photo.dtype}"
            )
        return photo
    return load_photo(photo)  # the project's one photo loader (limits, EXIF, type sniffing)


class ClipVisionEncoder:
    """CLIP image embeddings (projected, L2-normalised) of whole photos."""

    def __init__(self, model_dir: str | os.PathLike[str], device: str = "cpu") -> None:
        from transformers import CLIPVisionModelWithProjection

        folder = Path(model_dir)
        config_path, weights = folder / "config.json", folder / "model.safetensors"
        if not folder.is_dir() or not config_path.is_file():
            raise LorasynthError(
                f"{folder}: not a CLIP vision model folder (no config.json); give a folder "
                "written by CLIPVisionModelWithProjection.save_pretrained"
            )
        if not weights.is_file():
            pickles = [p for p in _PICKLES if (folder / p).exists()]
            found = f" (found {', '.join(pickles)}: pickles are refused)" if pickles else ""
            raise LorasynthError(
                f"{folder}: no model.safetensors{found}; convert the weights with "
                "save_pretrained(..., safe_serialization=True)"
            )
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(
                folder, local_files_only=True, use_safetensors=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise LorasynthError(f"{folder}: not a loadable CLIP vision model: {exc}") from None
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = device
        self.name = NAME
        self.dim = int(model.config.projection_dim)
        self.image_size = int(model.config.image_size)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            values = json.loads(pre.read_text())
            self.mean = tuple(values.get("image_mean", CLIP_MEAN))
            self.std = tuple(values.get("image_std", CLIP_STD))
        self.embedder_id = f"{NAME}/{files_hash([config_path, weights])}"

    def detect(self, image: np.ndarray) -> list[Face]:
        """The whole photo is the subject: one region covering it."""
        return whole_image_face(image)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 photos -> (N, 3, S, S) normalised pixel values, CLIP's way."""
        from PIL import Image

        s = self.image_size
        out = []
        for image in images:
            im = Image.fromarray(np.ascontiguousarray(image))
            scale = s / min(im.size)
            size = (max(s, round(im.width * scale)), max(s, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.BICUBIC)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            im = im.crop((left, top, left + s, top + s))
            out.append(np.asarray(im, dtype=np.float32) / 255.0)
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(N, dim) float32 unit rows for decoded RGB images."""
        rows = []
        for start in range(0, len(images), batch_size):
            pixels = self.preprocess(images[start : start + batch_size]).to(self.device)
            embeds = self.model(pixel_values=pixels).image_embeds.float()
            rows.append(torch.nn.functional.normalize(embeds, dim=-1).cpu().numpy())
        return np.concatenate(rows) if rows else np.empty((0, self.dim), np.float32)

    def embed(self, photos: Sequence, face_index: int | None = None) -> np.ndarray:
        """(N, dim) float32 unit rows, one per photo (path, bytes or RGB array), in order."""
        if not photos:
            raise LorasynthError("give at least one photo")
        if face_index not in (None, 0):
            raise LorasynthError(f"{NAME} embeds whole photos; there is no face {face_index}")
        return self.embed_images([_load_image(p) for p in photos])

    def embed_mean(self, photos: Sequence, face_index: int | None = None) -> np.ndarray:
        """(dim,) the L2-normalised mean over the photos' embeddings."""
        return mean_embedding(self.embed(photos, face_index))

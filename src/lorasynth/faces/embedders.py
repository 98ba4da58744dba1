"""Face embedders behind one protocol: photos in, L2-normalised identity vectors out.

Backends (`load_face_embedder(name)`):
- `dlib`: dlib's HOG detector, its 5-point landmarks and its ResNet recogniser (128-d), with the
  model files of the `face_recognition_models` package; the default for real photos.
- `arcface-onnx`: an insightface model folder (SCRFD detector + ArcFace recogniser, e.g.
  buffalo_l), run with onnxruntime (512-d).
- `mini-arcface` / `mini-eval` (or a mini embedder .safetensors path): the mini-world's own
  embedders; a render is the face, so detection returns the whole image.

Every backend has a stable `embedder_id` ("<name>/<sha256-16 of its model files>") that
checkpoints, banks and LoRA files record, so a prior refuses embeddings of another embedder.
One photo -> its faces (largest first) -> one face (the largest, or `face_index`) -> aligned
crop -> embedding; several photos -> the L2-normalised mean. A photo with no face is an error;
several faces, a small face or a blurry crop is a FaceWarning with the measured value.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from lorasynth.errors import LorasynthError
from lorasynth.faces.photos import Photo, load_photo, photo_name

MINI_NAMES = ("mini-arcface", "mini-eval")
BACKENDS = (*MINI_NAMES, "dlib", "arcface-onnx")


class FaceWarning(UserWarning):
    """A photo was used, but something about its face may hurt the result."""


@dataclass(frozen=True)
class Face:
    """One detected face, in the photo's pixel coordinates (pixel centres at integers).

    box: (x0, y0, x1, y1). landmarks: (5, 2) (x, y) in `landmark_scheme` order: "arcface"
    (eye on the image's left, other eye, nose tip, mouth corners left then right) or "dlib5"
    (dlib's 5-point model: outer and inner corner of the eye on the image's right, the same
    for the other eye, the base of the nose).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None
    landmark_scheme: str = "arcface"

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def side(self) -> float:
        """The shorter side of the box, in photo pixels (what `min_face_px` is checked on)."""
        return min(self.width, self.height)

    def to_json(self) -> dict:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": None if self.landmarks is None else np.round(self.landmarks, 1).tolist(),
            "landmark_scheme": self.landmark_scheme,
        }


@dataclass
class FaceEmbedding:
    """What embedding one photo found and measured."""

    photo: str
    embedding: np.ndarray  # (dim,) float32, unit norm
    faces: list[Face]  # every face found, largest first
    face_index: int
    blur: float | None  # variance of the Laplacian of the grey 112x112 aligned crop
    warnings: list[str] = field(default_factory=list)

    @property
    def face(self) -> Face:
        return self.faces[self.face_index]

    def to_json(self) -> dict:
        return {
            "path": self.photo,
            "embedding": self.embedding.tolist(),
            "faces_found": len(self.faces),
            "face_index": self.face_index,
            "face": self.face.to_json(),
            "blur": None if self.blur is None else round(self.blur, 2),
            "warnings": self.warnings,
        }


@runtime_checkable
class FaceEmbedder(Protocol):
    """What synthesis, the CLI and the service need from any face embedder."""

    name: str
    dim: int
    embedder_id: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """(H, W, 3) uint8 RGB -> its faces, largest first."""
        ...

    def embed(self, photos: Sequence[Photo], face_index: int | None = None) -> np.ndarray:
        """(N, dim) float32 unit rows, one per photo, in order."""
        ...

    def embed_mean(self, photos: Sequence[Photo], face_index: int | None = None) -> np.ndarray:
        """(dim,) the L2-normalised mean over the photos' embeddings."""
        ...


@dataclass(frozen=True)
class QualityLimits:
    """Below these a face still embeds, with a FaceWarning saying the measured value."""

    min_face_px: float = 80.0  # shorter box side, photo pixels
    min_blur: float = 60.0  # variance of the Laplacian of the grey 112x112 aligned crop


class DetectingEmbedder(ABC):
    """Shared photo -> face -> crop -> embedding logic; backends give detect/align/embed_crops.

    Beyond the protocol, `analyse` reports per photo what was found (the embed CLI prints it).
    """

    name: str
    dim: int
    embedder_id: str
    quality: QualityLimits | None = QualityLimits()

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[Face]:
        """(H, W, 3) uint8 RGB -> faces sorted largest first."""

    @abstractmethod
    def align(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The backend's aligned (S, S, 3) uint8 crop of one face."""

    @abstractmethod
    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 aligned crops -> (N, dim) float32 unit rows."""

    def analyse(
        self, photos: Sequence[Photo], face_index: int | None = None
    ) -> list[FaceEmbedding]:
        """Embed each photo's chosen face; every photo is read and checked before embedding."""
        if len(photos) == 0:  # not `not photos`: an (N, H, W, 3) array is a valid batch
            raise LorasynthError("give at least one photo")
        chosen = []
        for photo in photos:
            name = photo_name(photo)
            image = load_photo(photo)
            faces = sort_faces(self.detect(image))
            index, notes = choose_face(name, faces, face_index)
            crop = self.align(image, faces[index])
            chosen.append((name, faces, index, crop, notes))
        embeddings = self.embed_crops(np.stack([c[3] for c in chosen]))
        results = []
        for (name, faces, index, crop, notes), emb in zip(chosen, embeddings, strict=True):
            blur = None
            if self.quality is not None:
                blur = laplacian_variance(crop)
                notes = notes + quality_notes(name, faces[index], blur, self.quality)
            results.append(FaceEmbedding(name, emb, faces, index, blur, notes))
        return results

    def embed(self, photos: Sequence[Photo], face_index: int | None = None) -> np.ndarray:
        results = self.analyse(photos, face_index)
        for result in results:
            for note in result.warnings:
                warnings.warn(note, FaceWarning, stacklevel=2)
        return np.stack([r.embedding for r in results]).astype(np.float32)

    def embed_mean(self, photos: Sequence[Photo], face_index: int | None = None) -> np.ndarray:
        return mean_embedding(self.embed(photos, face_index))


def sort_faces(faces: list[Face]) -> list[Face]:
    """Largest box area first; ties by score (stable, so equal faces keep detector order)."""
    return sorted(faces, key=lambda f: (-(f.width * f.height), -f.score))


def choose_face(name: str, faces: list[Face], face_index: int | None) -> tuple[int, list[str]]:
    """The index of the face to use (largest by default) and the warnings about the choice."""
    if not faces:
        raise LorasynthError(
            f"{name}: no face found; use a photo where one face is clearly visible, "
            "frontal and at least about 80 pixels wide"
        )
    if face_index is not None and not 0 <= face_index < len(faces):
        raise LorasynthError(
            f"{name}: --face-index {face_index} but {len(faces)} face(s) found "
            f"(valid: 0..{len(faces) - 1}, largest first)"
        )
    index = 0 if face_index is None else face_index
    notes = []
    if len(faces) > 1:
        sizes = ", ".join(f"{f.width:.0f}x{f.height:.0f}" for f in faces)
        how = "the largest" if face_index is None else f"--face-index {index}"
        notes.append(
            f"{name}: {len(faces)} faces found (largest first: {sizes} px); using face {index} "
            f"({how}); choose another with --face-index K"
        )
    return index, notes


def quality_notes(name: str, face: Face, blur: float, limits: QualityLimits) -> list[str]:
    notes = []
    if face.side < limits.min_face_px:
        notes.append(
            f"{name}: the face is small ({face.width:.0f}x{face.height:.0f} px, under "
            f"{limits.min_face_px:.0f} px); identity may be weak, use a closer photo"
        )
    if blur < limits.min_blur:
        notes.append(
            f"{name}: the face looks blurry (variance of Laplacian {blur:.1f}, under "
            f"{limits.min_blur:.0f}); use a sharper photo"
        )
    return notes


def laplacian_variance(crop: np.ndarray, size: int = 112) -> float:
    """Sharpness: the variance of the 4-neighbour Laplacian of the grey crop at size x size."""
    from PIL import Image

    grey = Image.fromarray(np.ascontiguousarray(crop)).convert("L")
    if grey.size != (size, size):
        grey = grey.resize((size, size), Image.Resampling.BILINEAR)
    g = np.asarray(grey, dtype=np.float64)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def mean_embedding(embeddings: np.ndarray) -> np.ndarray:
    """The L2-normalised mean of (N, dim) unit rows: the condition for several photos."""
    mean = np.asarray(embeddings, dtype=np.float64).mean(0)
    norm = np.linalg.norm(mean)
    if norm < 1e-8:
        raise LorasynthError("the photos' embeddings cancel out (mean is zero); use other photos")
    return (mean / norm).astype(np.float32)


def files_hash(paths: list[Path]) -> str:
    """sha256 (16 hex digits) over the names and bytes of model files, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def whole_image_face(image: np.ndarray) -> list[Face]:
    """One region covering the whole image: for subjects that fill the photo (renders, objects)."""
    h, w = image.shape[:2]
    return [Face((0.0, 0.0, float(w), float(h)), 1.0, None, "none")]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class MiniFaceEmbedder(DetectingEmbedder):
    """A mini-world embedder as a FaceEmbedder: a render is one face filling the image."""

    quality = None  # renders are exact 32x32 face crops; size and blur checks do not apply

    def __init__(self, model) -> None:
        self.model = model
        self.name = model.config.name
        self.dim = model.config.embed_dim
        self.embedder_id = model.embedder_id or ""

    def detect(self, image: np.ndarray) -> list[Face]:
        return whole_image_face(image)

    def align(self, image: np.ndarray, face: Face) -> np.ndarray:
        size = self.model.config.image_size
        return load_photo(image, size)  # the same resize as the mini-world's photo loading

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        from lorasynth.faces.mini import embed_images

        return embed_images(self.model, crops).numpy()


def as_face_embedder(embedder) -> FaceEmbedder:
    """A FaceEmbedder for a backend object or a bare mini-world MiniEmbedder."""
    from lorasynth.faces.mini import MiniEmbedder

    if isinstance(embedder, MiniEmbedder):
        return MiniFaceEmbedder(embedder)
    if isinstance(embedder, FaceEmbedder):
        return embedder
    raise LorasynthError(f"not a face embedder: {type(embedder).__name__}")


def load_face_embedder(
    name: str | os.PathLike[str] = "mini-arcface", model_dir: str | os.PathLike[str] | None = None
) -> DetectingEmbedder:
    """A backend by name (see BACKENDS), or a mini embedder .safetensors path.

    model_dir: `dlib` — a folder with shape_predictor_5_face_landmarks.dat and
    dlib_face_recognition_resnet_model_v1.dat (default: the face_recognition_models package);
    `arcface-onnx` — an insightface model folder (required).
    """
    text = os.fspath(name)
    if text == "dlib":
        from lorasynth.faces.dlib_backend import DlibEmbedder

        return DlibEmbedder(Path(model_dir) if model_dir else None)
    if text == "arcface-onnx":
        from lorasynth.faces.arcface_onnx import ArcFaceOnnxEmbedder

        if model_dir is None:
            raise LorasynthError(
                "--embedder arcface-onnx needs --model-dir: an insightface model folder with an "
                "SCRFD detector and an ArcFace recogniser (e.g. buffalo_l: det_10g.onnx, "
                "w600k_r50.onnx)"
            )
        return ArcFaceOnnxEmbedder(Path(model_dir))
    if model_dir is not None:
        raise LorasynthError(f"--model-dir is for dlib and arcface-onnx, not {text!r}")
    if text in MINI_NAMES or text.endswith(".safetensors") or os.sep in text or "/" in text:
        from lorasynth.faces.mini import load_embedder

        return MiniFaceEmbedder(load_embedder(text))
    raise LorasynthError(
        f"unknown embedder {text!r}; choose one of {', '.join(BACKENDS)} or give a mini "
        "embedder .safetensors path"
    )

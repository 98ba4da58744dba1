"""Faces: photos in, identity embeddings out (photos, align, embedders; mini-world in mini)."""

from lorasynth.faces.embedders import (
    BACKENDS,
    Face,
    FaceEmbedder,
    FaceEmbedding,
    FaceWarning,
    as_face_embedder,
    load_face_embedder,
    mean_embedding,
)
from lorasynth.faces.photos import PhotoLimits, load_photo

__all__ = [
    "BACKENDS",
    "Face",
    "FaceEmbedder",
    "FaceEmbedding",
    "FaceWarning",
    "PhotoLimits",
    "as_face_embedder",
    "load_face_embedder",
    "load_photo",
    "mean_embedding",
]

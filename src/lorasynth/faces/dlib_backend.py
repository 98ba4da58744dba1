"""The `dlib` face embedder: HOG detector, 5-point landmarks, ResNet recogniser (128-d).

Model files come from the `face_recognition_models` PyPI package (or `--model-dir`): only
shape_predictor_5_face_landmarks.dat and dlib_face_recognition_resnet_model_v1.dat are read
(the 68-point model in that package is not licensed for commercial use). Alignment is dlib's
own 150x150 face chip from the 5 landmarks, which is what its recogniser was trained on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from lorasynth.errors import LorasynthError
from lorasynth.faces.embedders import DetectingEmbedder, Face, files_hash, l2_normalise

LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
RECOGNISER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def default_model_dir() -> Path:
    """The models folder of the installed face_recognition_models package (not imported: its
    __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LorasynthError(
            "the dlib embedder needs the face_recognition_models package: `pip install "
            "face_recognition_models==0.3.0` (or give --model-dir with "
            f"{LANDMARKS_FILE} and {RECOGNISER_FILE})"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibEmbedder(DetectingEmbedder):
    """dlib face detection + recognition; `embedder_id` = "dlib/<hash of the two model files>"."""

    name = "dlib"
    dim = 128

    def __init__(
        self,
        model_dir: Path | None = None,
        detect_side: int = 800,
        upsample: int = 1,
        min_score: float = 0.3,
    ) -> None:
        try:
            import dlib
        except ImportError:
            raise LorasynthError(
                "the dlib embedder needs dlib: `pip install dlib-bin==20.0.1.post1` "
                "(a prebuilt wheel; `make test` installs it)"
            ) from None
        folder = Path(model_dir) if model_dir else default_model_dir()
        paths = [folder / LANDMARKS_FILE, folder / RECOGNISER_FILE]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise LorasynthError(f"{folder}: missing dlib model file(s) {', '.join(missing)}")
        self._dlib = dlib
        try:
            self._detector = dlib.get_frontal_face_detector()
            self._landmarks = dlib.shape_predictor(str(paths[0]))
            self._recogniser = dlib.face_recognition_model_v1(str(paths[1]))
        except RuntimeError as exc:
            raise LorasynthError(f"{folder}: not a dlib model file: {exc}") from None
        self.model_dir = folder
        self.embedder_id = f"{self.name}/{files_hash(paths)}"
        # The HOG detector runs on a copy scaled to at most `detect_side` px (big photos cost
        # seconds otherwise), upsampled `upsample` times (finds faces down to ~40 px there).
        self.detect_side = detect_side
        self.upsample = upsample
        self.min_score = min_score

    def detect(self, image: np.ndarray) -> list[Face]:
        from PIL import Image

        dlib = self._dlib
        h, w = image.shape[:2]
        scale = min(1.0, self.detect_side / max(h, w))
        small = image
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = np.asarray(
                Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            )
        rects, scores, _ = self._detector.run(np.ascontiguousarray(small), self.upsample, 0.0)
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            if score < self.min_score:
                continue  # weak HOG hits are mostly not faces (e.g. patches on clothes)
            box = dlib.rectangle(
                round(rect.left() / scale),
                round(rect.top() / scale),
                round(rect.right() / scale),
                round(rect.bottom() / scale),
            )
            shape = self._landmarks(image, box)
            points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            bounds = (float(box.left()), float(box.top()), box.right() + 1.0, box.bottom() + 1.0)
            faces.append(Face(bounds, float(score), points, "dlib5"))
        return faces

    def align(self, image: np.ndarray, face: Face) -> np.ndarray:
        dlib = self._dlib
        x0, y0, x1, y1 = face.box
        rect = dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)
        points = [dlib.point(round(x), round(y)) for x, y in face.landmarks]
        shape = dlib.full_object_detection(rect, points)
        chip = dlib.get_face_chip(np.ascontiguousarray(image), shape, CHIP_SIZE, CHIP_PADDING)
        return np.asarray(chip, dtype=np.uint8)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        rows = [
            np.asarray(self._recogniser.compute_face_descriptor(np.ascontiguousarray(c)))
            for c in crops
        ]
        return l2_normalise(np.stack(rows))

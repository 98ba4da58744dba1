"""The `arcface-onnx` face embedder: an insightface model folder run with onnxruntime.

The folder (e.g. buffalo_l) holds an SCRFD detector (det_10g.onnx: input (1, 3, H, W), 9
outputs: scores, box distances and 5-point distances for strides 8, 16 and 32, two anchors per
position; 6 outputs without points, 10 or 15 with strides up to 128 and one anchor) and an
ArcFace recogniser (w600k_r50.onnx: input (N, 3, 112, 112), one (N, 512) output). Other
models in the folder (landmarks, gender/age) are ignored. Pre- and post-processing follow
insightface's python package: the photo is scaled into the detector input (640x640 unless the
model fixes it), top-left, zero padding, (x - 127.5) / 128 in RGB; boxes and points are
decoded from anchor centres, kept above score 0.5 and NMS'd at IoU 0.4; the face is aligned to
the 112x112 ArcFace template (align.py) and fed as (x - 127.5) / 127.5 in RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorasynth.errors import LorasynthError
from lorasynth.faces.align import ARCFACE_SIZE, align_face
from lorasynth.faces.embedders import DetectingEmbedder, Face, files_hash, l2_normalise

# File-name hints used by insightface model packs; a folder without them is classified by the
# models' input/output signatures instead.
DETECTOR_HINTS = ("det_", "scrfd")
RECOGNISER_HINTS = ("w600k", "glint", "arcface", "r50", "r100", "r34", "r18", "mbf")
SCRFD_LAYOUTS = {  # number of outputs -> (strides, anchors per position, has points)
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise LorasynthError(f"{path}: not a loadable ONNX model: {exc}") from None


def _role(session) -> str | None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        return None
    if len(outputs) in SCRFD_LAYOUTS:
        return "detector"
    if len(outputs) == 1 and list(inputs[0].shape[2:]) == [ARCFACE_SIZE, ARCFACE_SIZE]:
        dim = outputs[0].shape[-1]
        if isinstance(dim, int) and dim >= 64:
            return "recogniser"
    return None


def find_models(folder: Path) -> tuple[Path, Path]:
    """(detector, recogniser) ONNX files of an insightface folder; an error says what is wrong."""
    if not folder.is_dir():
        raise LorasynthError(f"{folder}: no such model folder")
    files = sorted(folder.glob("*.onnx"))
    if not files:
        raise LorasynthError(f"{folder}: no .onnx files (expected an SCRFD detector and ArcFace)")

    det = [p for p in files if any(h in p.name.lower() for h in DETECTOR_HINTS)]
    rec = [p for p in files if p not in det and any(h in p.name.lower() for h in RECOGNISER_HINTS)]
    if len(det) != 1 or len(rec) != 1:
        roles = {p: _role(_session(p)) for p in files}
        det = [p for p, r in roles.items() if r == "detector"]
        rec = [p for p, r in roles.items() if r == "recogniser"]
    if len(det) != 1 or len(rec) != 1:
        raise LorasynthError(
            f"{folder}: expected one SCRFD detector and one ArcFace recogniser .onnx, found "
            f"detectors {[p.name for p in det]} and recognisers {[p.name for p in rec]}"
        )
    return det[0], rec[0]


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression (insightface's, with its +1 pixel areas)."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x1[i], x1[order[1:]]) - np.maximum(x0[i], x0[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[order[1:]]) - np.maximum(y0[i], y0[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][overlap <= iou]
    return keep


class ArcFaceOnnxEmbedder(DetectingEmbedder):
    """SCRFD + ArcFace with onnxruntime; `embedder_id` = "arcface-onnx/<hash of both files>"."""

    name = "arcface-onnx"

    def __init__(
        self,
        model_dir: Path,
        det_size: int = 640,
        score_threshold: float = 0.5,
        nms_iou: float = 0.4,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.detector_path, self.recogniser_path = find_models(self.model_dir)
        self._det = _session(self.detector_path)
        self._rec = _session(self.recogniser_path)
        n_out = len(self._det.get_outputs())
        if n_out not in SCRFD_LAYOUTS:
            raise LorasynthError(
                f"{self.detector_path}: {n_out} outputs; an SCRFD detector has 6, 9, 10 or 15"
            )
        self.strides, self.anchors, self.has_points = SCRFD_LAYOUTS[n_out]
        if not self.has_points:
            raise LorasynthError(
                f"{self.detector_path}: this SCRFD model predicts no landmarks (a _KPS model "
                "such as det_10g.onnx is needed for alignment)"
            )
        shape = self._det.get_inputs()[0].shape
        fixed = all(isinstance(v, int) for v in shape[2:])
        self.det_input = (shape[3], shape[2]) if fixed else (det_size, det_size)  # (W, H)
        rec_in, rec_out = self._rec.get_inputs()[0], self._rec.get_outputs()
        if len(rec_out) != 1 or list(rec_in.shape[1:]) != [3, ARCFACE_SIZE, ARCFACE_SIZE]:
            raise LorasynthError(
                f"{self.recogniser_path}: expected input (N, 3, 112, 112) and one output, got "
                f"{rec_in.shape} and {len(rec_out)} outputs"
            )
        self.dim = int(rec_out[0].shape[-1])
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.embedder_id = f"{self.name}/{files_hash([self.detector_path, self.recogniser_path])}"

    # ---- detection ---------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Face]:
        from PIL import Image

        h, w = image.shape[:2]
        in_w, in_h = self.det_input
        if h / w > in_h / in_w:
            new_h, new_w = in_h, int(in_h * w / h)
        else:
            new_w, new_h = in_w, int(in_w * h / w)
        scale = new_h / h
        canvas = np.zeros((in_h, in_w, 3), dtype=np.float32)
        resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
        canvas[:new_h, :new_w] = np.asarray(resized, dtype=np.float32)
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = self._det.run(None, {self._det.get_inputs()[0].name: blob})
        boxes, scores, points = self._decode(outs, in_h, in_w)
        if not len(scores):
            return []
        keep = _nms(boxes, scores, self.nms_iou)
        return [
            Face(tuple(float(v) for v in boxes[i] / scale), float(scores[i]), points[i] / scale)
            for i in keep
        ]

    def _decode(self, outs: list[np.ndarray], in_h: int, in_w: int):
        n = len(self.strides)
        all_boxes, all_scores, all_points = [], [], []
        for k, stride in enumerate(self.strides):
            # Exports with a batch axis give (1, K, C); without, (K, C).
            scores, dist, kps = (np.asarray(outs[k + j * n]) for j in range(3))
            scores, dist, kps = (a[0] if a.ndim == 3 else a for a in (scores, dist, kps))
            rows, cols = in_h // stride, in_w // stride
            centres = np.stack(np.mgrid[:rows, :cols][::-1], axis=-1).reshape(-1, 2) * stride
            centres = np.repeat(centres.astype(np.float32), self.anchors, axis=0)
            if len(scores) != len(centres):
                raise LorasynthError(
                    f"{self.detector_path}: stride {stride} gives {len(scores)} scores for "
                    f"{len(centres)} anchors; not an SCRFD output layout"
                )
            hit = np.flatnonzero(scores.reshape(-1) >= self.score_threshold)
            c, d = centres[hit], dist[hit] * stride
            all_boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            all_scores.append(scores.reshape(-1)[hit])
            all_points.append(c[:, None, :] + (kps[hit] * stride).reshape(-1, 5, 2))
        return (np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_points))

    # ---- recognition -------------------------------------------------------------------
    def align(self, image: np.ndarray, face: Face) -> np.ndarray:
        return align_face(image, face.landmarks, ARCFACE_SIZE)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        blob = ((crops.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
        name = self._rec.get_inputs()[0].name
        out = np.concatenate([self._rec.run(None, {name: b[None]})[0] for b in blob])
        return l2_normalise(out.reshape(len(crops), -1))

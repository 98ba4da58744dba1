"""Small ONNX stand-ins for an insightface folder (buffalo_l), exported by the tests themselves.

`det_10g.onnx` keeps SCRFD-10G's signature: input "input.1" (1, 3, H, W) with dynamic H, W;
9 outputs, scores (K, 1) for strides 8, 16, 32, then box distances (K, 4), then 5-point
distances (K, 10), K = (H/s)(W/s) x 2 anchors. It "detects" a red square of 64x64 detector
pixels whose top-left corner is on the 32-pixel grid (only stride 32 fires), with a box equal
to the square and landmarks at the ArcFace template's place inside it.

`w600k_r50.onnx` keeps ArcFace's signature: input (N, 3, 112, 112), one (N, 512) output. It
maps the aligned crop's 8x8 colour pattern (mean removed) through a fixed random projection,
so the same pattern gives the same vector only if detection and alignment put it in place.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lorasynth.faces.align import ARCFACE_TEMPLATE

FACE = 64  # face side in detector pixels
STRIDE = 32


class TinyScrfd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # Landmark distances from the anchor centre (the square's centre), in stride units.
        points = (ARCFACE_TEMPLATE - 56.0) / 112.0 * FACE / STRIDE
        self.register_buffer("points", torch.tensor(points.reshape(1, 10), dtype=torch.float32))

    def forward(self, x: torch.Tensor):
        redness = x[:, :1] - 0.5 * (x[:, 1:2] + x[:, 2:3])
        scores, boxes, points = [], [], []
        for stride in (8, 16, 32):
            cells = F.avg_pool2d(redness, stride)  # (1, 1, H/s, W/s)
            if stride == STRIDE:
                # The window of 2x2 cells whose centre is this anchor (cells up and to the left).
                window = F.avg_pool2d(F.pad(cells, (1, 0, 1, 0)), 2, stride=1)
                score = torch.sigmoid(10.0 * (window - 1.3))
            else:
                score = cells * 0.0
            score = score.permute(0, 2, 3, 1).reshape(-1, 1)
            # Two anchors per position, consecutive; only the first one fires.
            score = torch.stack([score, score * 0.0], dim=1).reshape(-1, 1)
            ones = torch.ones_like(score)
            scores.append(score)
            boxes.append(ones.expand(-1, 4) * (FACE / 2 / stride))
            points.append(ones * self.points * (STRIDE / stride))
        return (*scores, *boxes, *points)


class TinyArcFace(nn.Module):
    def __init__(self, dim: int = 512, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(3 * 8 * 8, dim, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pattern = F.avg_pool2d(x, 14)  # (N, 3, 8, 8)
        pattern = pattern - pattern.mean(dim=(2, 3), keepdim=True)
        return pattern.flatten(1) @ self.projection  # not normalised, like ArcFace's output


def export_insightface_folder(folder: Path, recogniser_seed: int = 0) -> Path:
    """Write det_10g.onnx and w600k_r50.onnx (buffalo_l's names) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on constant folding
        _export(folder, names, recogniser_seed)
    return folder


def _export(folder: Path, names: list[str], recogniser_seed: int) -> None:
    torch.onnx.export(
        TinyScrfd().eval(),
        (torch.zeros(1, 3, 640, 640),),
        str(folder / "det_10g.onnx"),
        input_names=["input.1"],
        output_names=names,
        dynamic_axes={"input.1": {2: "height", 3: "width"}, **{n: {0: "anchors"} for n in names}},
        dynamo=False,
    )
    torch.onnx.export(
        TinyArcFace(seed=recogniser_seed).eval(),
        (torch.zeros(1, 3, 112, 112),),
        str(folder / "w600k_r50.onnx"),
        input_names=["input.1"],
        output_names=["embedding"],
        dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
        dynamo=False,
    )


def face_pattern(seed: int) -> np.ndarray:
    """A 4x4 grid of green levels: the 'identity' drawn inside a red face square."""
    return np.random.default_rng(seed).choice([0, 110], size=(4, 4)).astype(np.uint8)


def draw_face(canvas: np.ndarray, seed: int, x: int, y: int, side: int) -> tuple[int, ...]:
    """Draw identity `seed` as a red square at (x, y); returns its box (x0, y0, x1, y1)."""
    cell = side // 4
    green = np.kron(face_pattern(seed), np.ones((cell, cell), np.uint8))
    canvas[y : y + side, x : x + side] = np.stack(
        [np.full_like(green, 255), green, np.zeros_like(green)], axis=-1
    )
    return (x, y, x + side, y + side)


def face_photo(
    seed: int, width: int, height: int, x: int, y: int, side: int, background: int = 128
) -> tuple[np.ndarray, tuple[int, ...]]:
    """A grey photo with one face; the face must be FACE detector pixels on the 32 grid once
    the photo is scaled into 640x640 (e.g. 1280 wide: side 128 at multiples of 64)."""
    canvas = np.full((height, width, 3), background, np.uint8)
    return canvas, draw_face(canvas, seed, x, y, side)

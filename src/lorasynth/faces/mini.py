"""Mini-world face embedders: small CNNs, trained with an ArcFace loss on renders (see
lorasynth.world.train_embedders), mapping 32x32 RGB faces to L2-normalised embeddings.

Two are shipped: `mini-arcface` (a ResNet with a flatten head) conditions the LoRA prior;
`mini-eval` (a plain VGG-style net with global pooling, other seed) only judges. An embedder
file is safetensors with the config JSON and an `embedder_id` ("<name>/<sha256-16 of the
weights>") in its metadata, so a checkpoint can refuse embeddings from a different embedder.
The attribute regressor (a small MLP on frozen mini-eval embeddings predicting the identity
attribute vector) lives here too: it scores the "attribute error" of generated images.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lorasynth.errors import LorasynthError
from lorasynth.lora.safetensors_io import load_tensors, save_tensors
from lorasynth.paths import mini_world_dir

EMBEDDER_KIND = "lorasynth-mini-embedder"
REGRESSOR_KIND = "lorasynth-attribute-regressor"
ARCHS = ("resnet", "plain")
REGRESSOR_NAME = "attribute-regressor"


@dataclass(frozen=True)
class EmbedderConfig:
    """Architecture of one embedder; stored in its weight file.

    arch "resnet": 3x3 stem, stages of basic residual blocks (each stage halves the size),
    head BN -> flatten -> linear -> BN. arch "plain": a 5x5 stem, then per stage `depth` 3x3
    conv-BN-ReLU layers and a 2x2 max-pool; head: [global average, global max] -> linear -> BN.
    """

    name: str
    arch: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    embed_dim: int
    image_size: int = 32
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if self.arch not in ARCHS:
            raise LorasynthError(f"embedder arch must be one of {ARCHS}, got {self.arch!r}")
        if not self.widths or len(self.widths) != len(self.depths):
            raise LorasynthError(
                f"embedder widths {self.widths} and depths {self.depths} must be non-empty "
                "and of equal length"
            )
        if min(self.widths) < 1 or min(self.depths) < 1 or self.embed_dim < 1:
            raise LorasynthError(f"embedder sizes must be positive: {self}")
        side = self.image_size >> len(self.widths)
        if side < 1 or side << len(self.widths) != self.image_size:
            raise LorasynthError(
                f"image_size {self.image_size} must be divisible by 2^{len(self.widths)} "
                "(one halving per stage)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EmbedderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LorasynthError(f"embedder config: unknown fields {unknown}")
        return cls(**values)


# The shipped architectures. Changing one means retraining its weights.
PRESETS: dict[str, EmbedderConfig] = {
    "mini-arcface": EmbedderConfig(
        name="mini-arcface", arch="resnet", widths=(32, 64, 128), depths=(1, 2, 2), embed_dim=128
    ),
    "mini-eval": EmbedderConfig(
        name="mini-eval",
        arch="plain",
        widths=(32, 64, 128, 256),
        depths=(1, 1, 1, 1),
        embed_dim=128,
    ),
}


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout)
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(*_conv_bn(cin, cout, 1, stride))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


def _resnet_trunk(cfg: EmbedderConfig) -> tuple[nn.Module, nn.Module]:
    layers: list[nn.Module] = [*_conv_bn(3, cfg.widths[0]), nn.ReLU(inplace=True)]
    cin = cfg.widths[0]
    for width, depth in zip(cfg.widths, cfg.depths, strict=True):
        for i in range(depth):
            layers.append(_BasicBlock(cin, width, 2 if i == 0 else 1))
            cin = width
    side = cfg.image_size >> len(cfg.widths)
    head = nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.Dropout(cfg.dropout),
        nn.Flatten(),
        nn.Linear(cin * side * side, cfg.embed_dim),
        nn.BatchNorm1d(cfg.embed_dim),
    )
    return nn.Sequential(*layers), head


class _AvgMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def _plain_trunk(cfg: EmbedderConfig) -> tuple[nn.Module, nn.Module]:
    layers: list[nn.Module] = []
    cin, kernel = 3, 5
    for width, depth in zip(cfg.widths, cfg.depths, strict=True):
        for _ in range(depth):
            layers += [*_conv_bn(cin, width, kernel), nn.ReLU(inplace=True)]
            cin, kernel = width, 3
        layers.append(nn.MaxPool2d(2))
    head = nn.Sequential(
        _AvgMaxPool(),
        nn.Dropout(cfg.dropout),
        nn.Linear(2 * cin, cfg.embed_dim),
        nn.BatchNorm1d(cfg.embed_dim),
    )
    return nn.Sequential(*layers), head


class MiniEmbedder(nn.Module):
    """(N, 3, S, S) float images in [0, 1] -> (N, D) L2-normalised embeddings."""

    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__()
        self.config = config
        build = _resnet_trunk if config.arch == "resnet" else _plain_trunk
        self.trunk, self.head = build(config)
        # Set by load_embedder / save_embedder; None for an embedder that was never saved.
        self.embedder_id: str | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - 0.5) * 4.0  # roughly zero mean, unit spread for rendered faces
        return F.normalize(self.head(self.trunk(x)), dim=1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weights_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 (16 hex digits) over sorted keys, dtypes, shapes and bytes of a state dict."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def embedder_file(name: str) -> Path:
    """The default location of a shipped embedder or regressor: assets/mini-world/embedders/."""
    return mini_world_dir() / "embedders" / f"{name}.safetensors"


def _resolve(name_or_path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """(path, whether it came from a bare name) for a shipped name or a file path."""
    text = os.fspath(name_or_path)
    if os.sep in text or "/" in text or "." in Path(text).name:
        return Path(text), False
    return embedder_file(text), True


def save_embedder(
    embedder: MiniEmbedder,
    path: str | os.PathLike[str],
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write weights + config (+ `extra` JSON) atomically; sets and returns the embedder id."""
    state = {k: v.detach().cpu().clone() for k, v in embedder.state_dict().items()}
    embedder_id = f"{embedder.config.name}/{weights_hash(state)}"
    metadata = {
        "kind": EMBEDDER_KIND,
        "config": json.dumps(embedder.config.to_dict(), sort_keys=True),
        "embedder_id": embedder_id,
        "extra": json.dumps(dict(extra or {}), sort_keys=True),
    }
    save_tensors(path, state, metadata)
    embedder.embedder_id = embedder_id
    return embedder_id


def load_embedder(name_or_path: str | os.PathLike[str] = "mini-arcface") -> MiniEmbedder:
    """A shipped embedder by name ("mini-arcface", "mini-eval") or a .safetensors path; eval mode.

    The weights are checked against the `embedder_id` stored with them.
    """
    path, by_name = _resolve(name_or_path)
    if by_name and not path.is_file():
        raise LorasynthError(
            f"{path}: no such embedder file; build it with `python -m "
            f"lorasynth.world.train_embedders --name {path.stem} --out {path.parent}`"
        )
    tensors, meta = load_tensors(path)
    if meta.get("kind") != EMBEDDER_KIND:
        raise LorasynthError(
            f"{path}: not a lorasynth mini embedder (metadata kind {meta.get('kind')!r}, "
            f"expected {EMBEDDER_KIND!r})"
        )
    try:
        config = EmbedderConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise LorasynthError(f"{path}: embedder config metadata is missing or invalid") from exc
    embedder = MiniEmbedder(config)
    _load_state(embedder, tensors, path)
    expected = f"{config.name}/{weights_hash(tensors)}"
    if meta.get("embedder_id") != expected:
        raise LorasynthError(
            f"{path}: embedder_id {meta.get('embedder_id')!r} does not match its weights "
            f"({expected!r}); the file is corrupt or was edited"
        )
    embedder.embedder_id = expected
    return embedder.eval()


def _load_state(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unknown = sorted(set(tensors) - set(expected))
    if missing or unknown:
        raise LorasynthError(
            f"{path}: weights do not fit the stored config: missing {missing[:5]}, "
            f"unknown {unknown[:5]}"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise LorasynthError(
                f"{path}: tensor {key!r} has shape {tuple(value.shape)}, "
                f"config expects {tuple(expected[key].shape)}"
            )
    module.load_state_dict(tensors)


def images_to_tensor(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8, or float in [0, 1] -> (N, 3, size, size) float32 in [0, 1].

    Other sizes are resized with antialiased bilinear filtering.
    """
    x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise LorasynthError(f"images must be (N, H, W, 3) RGB, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
    else:
        raise LorasynthError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    x = x.permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    return x.contiguous()


def load_photo(path: str | os.PathLike[str], size: int = 32) -> np.ndarray:
    """A photo as (size, size, 3) uint8 RGB (see lorasynth.faces.photos.load_photo: type from
    content, limits, EXIF orientation; bilinear resize); anything unreadable is a
    LorasynthError naming the photo."""
    from lorasynth.faces.photos import load_photo as load_any_photo

    return load_any_photo(path, size)


@torch.no_grad()
def embed_images(
    embedder: MiniEmbedder, images: np.ndarray | torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """(N, H, W, 3) uint8 (or float in [0, 1]) RGB -> (N, D) float32 unit vectors, on CPU."""
    was_training = embedder.training
    embedder.eval()
    device = next(embedder.parameters()).device
    size = embedder.config.image_size
    out = []
    try:
        for start in range(0, len(images), batch_size):
            batch = images_to_tensor(images[start : start + batch_size], size).to(device)
            out.append(embedder(batch).float().cpu())
    finally:
        embedder.train(was_training)
    if not out:
        return torch.empty(0, embedder.config.embed_dim)
    return torch.cat(out)


@dataclass(frozen=True)
class RegressorConfig:
    """An MLP from embeddings of one embedder (by id) to the identity attribute vector."""

    input_dim: int
    hidden: int
    attribute_names: tuple[str, ...]
    embedder_id: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "attribute_names", tuple(self.attribute_names))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "attribute_names": list(self.attribute_names)}


class AttributeRegressor(nn.Module):
    """(N, D) embeddings -> (N, A) attributes in [0, 1] (a sigmoid output)."""

    def __init__(self, config: RegressorConfig) -> None:
        super().__init__()
        self.config = config
        self.net = nn.Sequential(
            nn.Linear(config.input_dim, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, len(config.attribute_names)),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(embeddings))


def save_regressor(
    regressor: AttributeRegressor,
    path: str | os.PathLike[str],
    extra: Mapping[str, Any] | None = None,
) -> None:
    state = {k: v.detach().cpu().clone() for k, v in regressor.state_dict().items()}
    metadata = {
        "kind": REGRESSOR_KIND,
        "config": json.dumps(regressor.config.to_dict(), sort_keys=True),
        "embedder_id": regressor.config.embedder_id,
        "extra": json.dumps(dict(extra or {}), sort_keys=True),
    }
    save_tensors(path, state, metadata)


def load_regressor(name_or_path: str | os.PathLike[str] = REGRESSOR_NAME) -> AttributeRegressor:
    """The shipped attribute regressor (on mini-eval embeddings) or one from a path; eval mode."""
    path, by_name = _resolve(name_or_path)
    if by_name and not path.is_file():
        raise LorasynthError(
            f"{path}: no such attribute regressor; it is written with mini-eval by "
            f"`python -m lorasynth.world.train_embedders --name mini-eval --out {path.parent}`"
        )
    tensors, meta = load_tensors(path)
    if meta.get("kind") != REGRESSOR_KIND:
        raise LorasynthError(
            f"{path}: not a lorasynth attribute regressor (metadata kind {meta.get('kind')!r})"
        )
    try:
        config = RegressorConfig(**json.loads(meta["config"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise LorasynthError(f"{path}: regressor config metadata is missing or invalid") from exc
    regressor = AttributeRegressor(config)
    _load_state(regressor, tensors, path)
    return regressor.eval()


@torch.no_grad()
def predict_attributes(
    regressor: AttributeRegressor,
    embedder: MiniEmbedder,
    images: np.ndarray | torch.Tensor,
) -> torch.Tensor:
    """(N, H, W, 3) images -> (N, A) predicted identity attributes (ATTRIBUTE_NAMES order)."""
    if embedder.embedder_id != regressor.config.embedder_id:
        raise LorasynthError(
            f"attribute regressor was fitted on embedder {regressor.config.embedder_id!r}, "
            f"got {embedder.embedder_id!r}; use the mini-eval embedder it was saved with"
        )
    return regressor.eval()(embed_images(embedder, images))

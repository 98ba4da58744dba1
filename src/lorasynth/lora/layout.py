"""LoraLayout: which UNet linear layers carry a LoRA, their shapes and rank, in the UNet's order.

A layout fixes the meaning of every coordinate of a canonical vector, so its content hash
travels with every bank, vector and checkpoint; comparing hashes catches any mix-up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from importlib import resources
from typing import Any

import torch

from lorasynth.errors import LorasynthError

# Target presets: which attention projections a LoRA covers (suffixes of module paths).
PRESETS: dict[str, tuple[str, ...]] = {
    # weights2weights' choice: queries and values of self- and cross-attention.
    "w2w": ("attn1.to_q", "attn1.to_v", "attn2.to_q", "attn2.to_v"),
    "attn": tuple(
        f"{attn}.{proj}"
        for attn in ("attn1", "attn2")
        for proj in ("to_q", "to_k", "to_v", "to_out.0")
    ),
}
# Attention and the transformer blocks' feed-forward layers. On the mini-world (16 identities,
# 300 steps at lr 3e-3) rank 1 scores ID sim 0.43 and rank 4 0.52, against 0.25 for w2w rank 1.
PRESETS["attn-ff"] = PRESETS["attn"] + ("ff.net.0.proj", "ff.net.2")
# Plus the ResNet blocks' 3x3 convolutions (LoCon-style): a full fine-tune of the mini-world UNet
# showed that the resnets carry most of identity (resnets only: ID sim 0.75, attention only 0.62).
PRESETS["attn-ff-conv"] = PRESETS["attn-ff"] + ("conv1", "conv2")
PRESETS["conv"] = ("conv1", "conv2")

# Registration order of sub-modules in diffusers' UNets, so a layout read from a file (which
# has no order of its own) sorts exactly as UNet.named_modules() would list it.
_MODULE_ORDER = [
    "conv_in", "time_proj", "time_embedding", "linear_1", "linear_2", "add_embedding",
    "down_blocks", "up_blocks", "mid_block",
    "attentions", "resnets", "downsamplers", "upsamplers",
    "norm", "proj_in", "transformer_blocks", "proj_out",
    "norm1", "attn1", "conv1", "time_emb_proj", "norm2", "attn2", "conv2", "conv_shortcut",
    "norm3", "ff", "net", "proj",
    "to_q", "to_k", "to_v", "add_k_proj", "add_v_proj", "add_q_proj", "to_out", "to_add_out",
]  # fmt: skip
_ORDER_RANK = {name: i for i, name in enumerate(_MODULE_ORDER)}

# Multi-word names in diffusers module paths; kohya joins path parts with "_", so these are
# needed to split a kohya key back into a module path.
_COMPOUND_NAMES = sorted(
    {n for n in _MODULE_ORDER if "_" in n} | {"conv_norm_out", "conv_out", "class_embedding"},
    key=lambda n: -n.count("_"),
)


@dataclass(frozen=True)
class LayoutRow:
    """One LoRA-carrying layer: dW has shape (out_features, in_features), rank `rank`.

    For a convolution, `kernel` is (kh, kw) and in_features = in_channels * kh * kw: the LoRA's
    down weight is a kh x kw convolution to `rank` channels and its up weight a 1x1 convolution,
    so dW, flattened like the base weight, is again up @ down.
    """

    module: str
    in_features: int
    out_features: int
    rank: int
    kernel: tuple[int, int] | None = None

    @property
    def is_conv(self) -> bool:
        return self.kernel is not None

    @property
    def down_shape(self) -> tuple[int, ...]:
        """The down weight's shape in a LoRA file (4-D for convolutions)."""
        if self.kernel is None:
            return (self.rank, self.in_features)
        kh, kw = self.kernel
        return (self.rank, self.in_features // (kh * kw), kh, kw)

    @property
    def size(self) -> int:
        """Values this row takes in a canonical vector: A' (rank x in) then B' (out x rank)."""
        return self.rank * (self.in_features + self.out_features)


@dataclass(frozen=True)
class LoraLayout:
    """Ordered rows (module path, in, out, rank) in the UNet's own named_modules() order."""

    rows: tuple[LayoutRow, ...]

    def __post_init__(self) -> None:
        names = [r.module for r in self.rows]
        if len(set(names)) != len(names):
            raise LorasynthError("layout lists a module twice")
        if not self.rows:
            raise LorasynthError("layout is empty: no LoRA-carrying modules")

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_unet(cls, unet: torch.nn.Module, preset: str = "w2w", rank: int = 1) -> LoraLayout:
        """Rows for every Linear (or Conv2d) of `unet` whose path ends with a preset suffix."""
        suffixes = preset_suffixes(preset)
        rows = tuple(
            layer_row(name, module, rank)
            for name, module in unet.named_modules()
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and name.endswith(suffixes)
        )
        if not rows:
            raise LorasynthError(f"no module of the UNet matches preset {preset!r}")
        return cls(rows)

    @classmethod
    def from_unet_config(
        cls, config: Mapping[str, Any], preset: str = "w2w", rank: int = 1
    ) -> LoraLayout:
        """Layout of a UNet2DConditionModel built from `config` on the meta device (no memory)."""
        from accelerate import init_empty_weights
        from diffusers import UNet2DConditionModel

        config = {k: v for k, v in config.items() if not k.startswith("_")}
        with init_empty_weights():
            unet = UNet2DConditionModel(**config)
        return cls.from_unet(unet, preset, rank)

    @classmethod
    def sd15(cls, preset: str = "w2w", rank: int = 1) -> LoraLayout:
        """The Stable Diffusion 1.5 UNet's layout (its config ships with lorasynth)."""
        return cls.from_unet_config(load_unet_config("sd15"), preset, rank)

    @classmethod
    def sdxl(cls, preset: str = "w2w", rank: int = 1) -> LoraLayout:
        """The Stable Diffusion XL base UNet's layout (its config ships with lorasynth)."""
        return cls.from_unet_config(load_unet_config("sdxl"), preset, rank)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple]) -> LoraLayout:
        """Layout from {module: (in, out, rank[, kernel])}, sorted in diffusers UNet order."""
        ordered = sorted(shapes, key=unet_order_key)
        return cls(tuple(LayoutRow(m, *shapes[m]) for m in ordered))

    # ---- derived facts -----------------------------------------------------------------
    @cached_property
    def size(self) -> int:
        """Length of a canonical vector in this layout."""
        return sum(r.size for r in self.rows)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start of each row's block in the canonical vector (len(rows) + 1 entries)."""
        out = [0]
        for row in self.rows:
            out.append(out[-1] + row.size)
        return tuple(out)

    @cached_property
    def hash(self) -> str:
        """Stable content hash: sha256 of the canonical JSON rows, first 16 hex digits."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @cached_property
    def max_rank(self) -> int:
        return max(r.rank for r in self.rows)

    @cached_property
    def modules(self) -> tuple[str, ...]:
        return tuple(r.module for r in self.rows)

    def row(self, module: str) -> LayoutRow:
        try:
            return self.rows_by_module[module]
        except KeyError:
            raise LorasynthError(f"module {module!r} is not in layout {self.hash}") from None

    @cached_property
    def rows_by_module(self) -> dict[str, LayoutRow]:
        return {r.module: r for r in self.rows}

    def with_rank(self, rank: int) -> LoraLayout:
        """The same modules at another rank."""
        return LoraLayout(tuple(replace(r, rank=rank) for r in self.rows))

    def describe(self) -> str:
        return f"layout {self.hash} ({len(self.rows)} modules, {self.size:,} values)"

    # ---- serialisation -----------------------------------------------------------------
    def to_json(self) -> str:
        # Convolution rows add their kernel as a fifth entry; linear rows (and so the hashes of
        # all linear layouts) are unchanged.
        rows = [
            [r.module, r.in_features, r.out_features, r.rank]
            + ([list(r.kernel)] if r.kernel is not None else [])
            for r in self.rows
        ]
        return json.dumps(rows, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LoraLayout:
        try:
            return cls(tuple(_row_from_json(row) for row in json.loads(text)))
        except (ValueError, TypeError) as exc:
            raise LorasynthError(f"malformed layout JSON: {exc}") from None


def layer_row(name: str, module: torch.nn.Module, rank: int) -> LayoutRow:
    """The layout row of a Linear or Conv2d module (how a layout counts its in/out features)."""
    if isinstance(module, torch.nn.Linear):
        return LayoutRow(name, module.in_features, module.out_features, rank)
    assert isinstance(module, torch.nn.Conv2d)
    if module.groups != 1:
        raise LorasynthError(f"{name}: grouped convolutions cannot carry a LoRA")
    kh, kw = module.kernel_size
    return LayoutRow(name, module.in_channels * kh * kw, module.out_channels, rank, (kh, kw))


def _row_from_json(row: list) -> LayoutRow:
    module, i, o, r, *rest = row
    if len(rest) > 1:
        raise ValueError(f"row {row!r} has more than five entries")
    kernel = (int(rest[0][0]), int(rest[0][1])) if rest else None
    return LayoutRow(str(module), int(i), int(o), int(r), kernel)


def preset_suffixes(preset: str) -> tuple[str, ...]:
    try:
        return tuple(f".{s}" for s in PRESETS[preset])
    except KeyError:
        raise LorasynthError(
            f"unknown layout preset {preset!r}; choose one of {', '.join(PRESETS)}"
        ) from None


def load_unet_config(name: str) -> dict[str, Any]:
    """A UNet config shipped in lorasynth/configs (e.g. `sd15`)."""
    try:
        text = resources.files("lorasynth.configs").joinpath(f"unet-{name}.json").read_text()
    except FileNotFoundError:
        raise LorasynthError(f"no shipped UNet config named {name!r}") from None
    return json.loads(text)


def unet_order_key(module: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that reproduces diffusers UNet named_modules() order for module paths."""
    key = []
    for part in module.split("."):
        if part.isdigit():
            key.append((0, int(part), ""))
        else:
            key.append((1, _ORDER_RANK.get(part, len(_ORDER_RANK)), part))
    return tuple(key)


def kohya_name(module: str) -> str:
    """kohya's key stem for a UNet module path: `lora_unet_` + path with dots as underscores."""
    return "lora_unet_" + module.replace(".", "_")


def module_from_kohya(stem: str, known: Iterable[str] | None = None) -> str:
    """Invert kohya_name; exact via `known` module paths, else by diffusers' naming rules."""
    if not stem.startswith("lora_unet_"):
        raise LorasynthError(f"{stem!r} is not a kohya UNet key (expected prefix lora_unet_)")
    body = stem[len("lora_unet_") :]
    if known is not None:
        for module in known:
            if module.replace(".", "_") == body:
                return module
    parts: list[str] = []
    rest = body
    while rest:
        for name in _COMPOUND_NAMES:
            if rest == name or rest.startswith(name + "_"):
                parts.append(name)
                rest = rest[len(name) + 1 :]
                break
        else:
            head, _, rest = rest.partition("_")
            parts.append(head)
    return ".".join(parts)

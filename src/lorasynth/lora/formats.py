"""LoRA files in the three formats the ecosystem uses, read strictly and written loadably.

- diffusers: `unet.<module>.lora.down.weight` / `.lora.up.weight`, no alpha (scale 1), as
  `StableDiffusionPipeline.save_lora_weights` writes after `convert_state_dict_to_diffusers`.
- peft: `[base_model.model.|unet.]<module>.lora_A.weight` / `.lora_B.weight`; alpha from
  `adapter_config.json` beside the file or diffusers' `lora_adapter_metadata`, else alpha = r.
- kohya: `lora_unet_<module with dots as _>.lora_down.weight` / `.lora_up.weight` / `.alpha`.

Every key is accounted for: unknown, missing or malformed ones are errors naming the key
(the common loaders silently drop them, which hides broken files).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorasynth.errors import LorasynthError
from lorasynth.lora.layout import LoraLayout, kohya_name, module_from_kohya
from lorasynth.lora.safetensors_io import load_tensors, save_tensors

FORMATS = ("diffusers", "peft", "kohya")
WRITABLE_FORMATS = ("diffusers", "kohya")

_PEFT_PREFIXES = ("base_model.model.", "unet.")
# Cross-attention width -> modelspec architecture, for files that do not say.
_ARCH_BY_CONTEXT_DIM = {
    768: "stable-diffusion-v1/lora",
    1024: "stable-diffusion-v2-512/lora",
    2048: "stable-diffusion-xl-v1-base/lora",
}
# modelspec's required resolution and the prediction type, per architecture (the values
# kohya's sd-scripts writes for LoRAs of these models), and kohya's base model version.
_ARCH_FACTS = {
    "stable-diffusion-v1/lora": ("512x512", "epsilon", "sd_v1"),
    "stable-diffusion-v2-512/lora": ("512x512", "epsilon", "sd_v2"),
    "stable-diffusion-xl-v1-base/lora": ("1024x1024", "epsilon", "sdxl_base_v1-0"),
}


@dataclass
class LoraModule:
    """One module's update dW = (alpha / rank) * up @ down.

    A convolution's LoRA (LoCon) is held flat too: down (rank, in_channels * kh * kw), up
    (out_channels, rank), with `kernel` = (kh, kw); files store them 4-D (`from_file_weights`).
    """

    down: torch.Tensor  # A: (rank, in_features)
    up: torch.Tensor  # B: (out_features, rank)
    alpha: float
    kernel: tuple[int, int] | None = None

    @classmethod
    def from_file_weights(
        cls, down: torch.Tensor, up: torch.Tensor, alpha: float, where: str = ""
    ) -> LoraModule:
        """From weights as files store them: 2-D (linear) or 4-D down with a 1x1 up (conv)."""
        if down.ndim == 4 and up.ndim == 4:
            if tuple(up.shape[2:]) != (1, 1):
                raise LorasynthError(
                    f"{where}up weight has shape {tuple(up.shape)}; a convolution LoRA's up "
                    "weight must be 1x1"
                )
            kernel = (int(down.shape[2]), int(down.shape[3]))
            return cls(down.reshape(down.shape[0], -1), up.reshape(up.shape[0], -1), alpha, kernel)
        if down.ndim != 2 or up.ndim != 2:
            raise LorasynthError(
                f"{where}down/up weights have shapes {tuple(down.shape)} and {tuple(up.shape)}; "
                "expected both 2-D (linear) or both 4-D (convolution)"
            )
        return cls(down, up, alpha)

    def file_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(down, up) shaped as files store them (4-D for a convolution)."""
        if self.kernel is None:
            return self.down, self.up
        kh, kw = self.kernel
        return (
            self.down.reshape(self.rank, -1, kh, kw),
            self.up.reshape(*self.up.shape, 1, 1),
        )

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """The dense update dW (out x in); for tests and small layers only."""
        return self.scale * (self.up.double() @ self.down.double())


@dataclass
class LoraFile:
    """A UNet LoRA: modules in layout order, the format it came in, and its string metadata."""

    modules: dict[str, LoraModule]
    format: str = "diffusers"
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def layout(self) -> LoraLayout:
        """This file's own layout; exact when the file carries `lorasynth.layout` metadata."""
        stored = self.metadata.get("lorasynth.layout")
        if stored:
            layout = LoraLayout.from_json(stored)
            if set(layout.modules) == set(self.modules):
                return layout
        return LoraLayout.from_shapes(
            {m: (w.down.shape[1], w.up.shape[0], w.rank, w.kernel) for m, w in self.modules.items()}
        )

    @property
    def architecture(self) -> str:
        if "modelspec.architecture" in self.metadata:
            return self.metadata["modelspec.architecture"]
        for name, mod in self.modules.items():
            if ".attn2.to_k" in name or ".attn2.to_v" in name:
                return _ARCH_BY_CONTEXT_DIM.get(int(mod.down.shape[1]), "unknown/lora")
        return "unknown/lora"

    @property
    def params(self) -> int:
        return sum(m.down.numel() + m.up.numel() for m in self.modules.values())


# ---- reading ------------------------------------------------------------------------------


def read_lora(
    path: str | os.PathLike[str],
    layout: LoraLayout | None = None,
    adapter_config: str | os.PathLike[str] | None = None,
) -> LoraFile:
    """Read and validate a UNet LoRA in any supported format; optionally check it fits `layout`.

    Raises LorasynthError naming the file and key on anything unexpected.
    """
    path = Path(path)
    tensors, metadata = load_tensors(path)
    if not tensors:
        raise LorasynthError(f"{path}: holds no tensors")
    fmt = detect_format(path, tensors)
    if fmt == "kohya":
        modules = _parse_kohya(path, tensors, layout)
    elif fmt == "diffusers":
        modules = _parse_pairs(path, tensors, "unet.", ".lora.down.weight", ".lora.up.weight")
        modules = {
            m: LoraModule.from_file_weights(d, u, float(d.shape[0]), f"{path}: {m}: ")
            for m, (d, u) in modules.items()
        }
    else:
        modules = _parse_peft(path, tensors, metadata, adapter_config)
    for module, weights in modules.items():
        _validate_module(path, module, weights, fmt)
    ordered = LoraFile(modules, fmt, metadata, path).layout().modules
    lora = LoraFile({m: modules[m] for m in ordered}, fmt, metadata, path)
    if layout is not None:
        check_fits_layout(lora, layout)
    return lora


def detect_format(path: Path, tensors: Mapping[str, torch.Tensor]) -> str:
    keys = list(tensors)
    if any(k.startswith(("lora_te_", "lora_te1_", "lora_te2_", "text_encoder.")) for k in keys):
        key = next(k for k in keys if k.startswith(("lora_te", "text_encoder.")))
        raise LorasynthError(
            f"{path}: key {key!r} belongs to a text-encoder LoRA; lorasynth handles UNet LoRAs "
            "only. Strip the text-encoder keys first"
        )
    kinds = {
        "kohya": [k for k in keys if k.startswith("lora_unet_")],
        "diffusers": [k for k in keys if ".lora.down." in k or ".lora.up." in k],
        "peft": [k for k in keys if ".lora_A." in k or ".lora_B." in k],
    }
    found = [name for name, ks in kinds.items() if ks]
    if len(found) > 1:
        a, b = found[:2]
        raise LorasynthError(
            f"{path}: mixes {a} keys ({kinds[a][0]!r}) and {b} keys ({kinds[b][0]!r}); "
            "a file must use one format"
        )
    if not found:
        raise LorasynthError(
            f"{path}: key {keys[0]!r} is not a LoRA key of any known format "
            "(diffusers lora.down/up, PEFT lora_A/B, kohya lora_unet_*)"
        )
    return found[0]


def _parse_pairs(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    prefixes: str | tuple[str, ...],
    down: str,
    up: str,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pop every `<prefix><module><down|up>` key; anything left over is an error."""
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            raise LorasynthError(f"{path}: unknown key {key!r} (expected prefix {prefixes[0]!r})")
        body = key[len(prefix or "") :]
        if body.endswith(down):
            downs[body[: -len(down)]] = tensor
        elif body.endswith(up):
            ups[body[: -len(up)]] = tensor
        else:
            raise LorasynthError(f"{path}: unknown key {key!r}")
    return _pair_up(path, downs, ups, down, up)


def _pair_up(
    path: Path, downs: dict[str, torch.Tensor], ups: dict[str, torch.Tensor], down: str, up: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    for module in downs.keys() - ups.keys():
        raise LorasynthError(f"{path}: missing key for {module!r}: has {down!r} but no {up!r}")
    for module in ups.keys() - downs.keys():
        raise LorasynthError(f"{path}: missing key for {module!r}: has {up!r} but no {down!r}")
    return {m: (downs[m], ups[m]) for m in downs}


def _parse_peft(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    adapter_config: str | os.PathLike[str] | None,
) -> dict[str, LoraModule]:
    for key in tensors:
        if "lora_magnitude_vector" in key or "lora_embedding" in key:
            raise LorasynthError(f"{path}: key {key!r} is DoRA/embedding LoRA, not supported")
    first = next(iter(tensors))
    prefix = next((p for p in _PEFT_PREFIXES if first.startswith(p)), "")
    pairs = _parse_pairs(path, tensors, prefix, ".lora_A.weight", ".lora_B.weight")
    config = _peft_config(path, metadata, adapter_config)
    default_alpha = config.get("lora_alpha")
    alpha_pattern = config.get("alpha_pattern") or {}
    modules = {}
    for module, (down, up) in pairs.items():
        alpha = _match_pattern(alpha_pattern, module)
        if alpha is None:
            alpha = default_alpha if default_alpha is not None else down.shape[0]
        modules[module] = LoraModule.from_file_weights(
            down, up, float(alpha), f"{path}: {module}: "
        )
    return modules


def _peft_config(
    path: Path, metadata: Mapping[str, str], adapter_config: str | os.PathLike[str] | None
) -> dict:
    """PEFT's adapter config: explicit file, `adapter_config.json` beside, or diffusers metadata."""
    candidates = [Path(adapter_config)] if adapter_config else [path.parent / "adapter_config.json"]
    for cfg in candidates:
        if cfg.is_file():
            try:
                return json.loads(cfg.read_text())
            except json.JSONDecodeError as exc:
                raise LorasynthError(f"{cfg}: adapter config is not valid JSON: {exc}") from None
        if adapter_config:
            raise LorasynthError(f"{cfg}: adapter config not found")
    if "lora_adapter_metadata" in metadata:
        try:
            return json.loads(metadata["lora_adapter_metadata"])
        except json.JSONDecodeError:
            raise LorasynthError(f"{path}: metadata lora_adapter_metadata is not JSON") from None
    return {}


def _match_pattern(pattern: Mapping[str, float], module: str) -> float | None:
    # PEFT matches alpha_pattern keys as suffixes of the module path.
    for key, value in pattern.items():
        if module == key or module.endswith("." + key):
            return float(value)
    return None


def _parse_kohya(
    path: Path, tensors: Mapping[str, torch.Tensor], layout: LoraLayout | None
) -> dict[str, LoraModule]:
    known = layout.modules if layout is not None else None
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    alphas: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        stem, _, suffix = key.partition(".")
        target = {"lora_down.weight": downs, "lora_up.weight": ups, "alpha": alphas}.get(suffix)
        if target is None:
            raise LorasynthError(f"{path}: unknown key {key!r}")
        target[stem] = tensor
    pairs = _pair_up(path, downs, ups, ".lora_down.weight", ".lora_up.weight")
    for stem in alphas.keys() - pairs.keys():
        raise LorasynthError(f"{path}: key {stem + '.alpha'!r} has no lora_down/lora_up weights")
    modules = {}
    for stem, (down, up) in pairs.items():
        alpha_t = alphas.get(stem)
        if alpha_t is not None and alpha_t.numel() != 1:
            raise LorasynthError(f"{path}: key {stem + '.alpha'!r} must be a scalar")
        alpha = float(alpha_t.item()) if alpha_t is not None else float(down.shape[0])
        if not math.isfinite(alpha):
            raise LorasynthError(f"{path}: key {stem + '.alpha'!r} is NaN or infinite")
        module = module_from_kohya(stem, known)
        if module in modules:
            raise LorasynthError(f"{path}: key {stem!r} maps to module {module!r} twice")
        modules[module] = LoraModule.from_file_weights(down, up, alpha, f"{path}: {module}: ")
    return modules


def _validate_module(path: Path, module: str, w: LoraModule, fmt: str) -> None:
    down_key, up_key = _keys(module, fmt)
    for key, t in ((down_key, w.down), (up_key, w.up)):
        if not t.dtype.is_floating_point:
            raise LorasynthError(f"{path}: key {key!r} has dtype {t.dtype}, expected a float type")
        if not torch.isfinite(t).all():
            raise LorasynthError(f"{path}: key {key!r} contains NaN or Inf")
    if w.down.shape[0] != w.up.shape[1]:
        raise LorasynthError(
            f"{path}: rank mismatch in {module!r}: {down_key!r} has rank {w.down.shape[0]} "
            f"(shape {tuple(w.down.shape)}) but {up_key!r} has rank {w.up.shape[1]} "
            f"(shape {tuple(w.up.shape)})"
        )
    if w.rank == 0:
        raise LorasynthError(f"{path}: key {down_key!r} has rank 0")


def _keys(module: str, fmt: str) -> tuple[str, str]:
    if fmt == "kohya":
        stem = kohya_name(module)
        return f"{stem}.lora_down.weight", f"{stem}.lora_up.weight"
    if fmt == "diffusers":
        return f"unet.{module}.lora.down.weight", f"unet.{module}.lora.up.weight"
    return f"{module}.lora_A.weight", f"{module}.lora_B.weight"


def check_fits_layout(lora: LoraFile, layout: LoraLayout) -> None:
    """Same modules and shapes as `layout`, rank at most the layout's; else name the first misfit."""
    rows = layout.rows_by_module
    if lora.modules.keys() == rows.keys() and all(
        w.down.shape[1] == rows[m].in_features
        and w.up.shape[0] == rows[m].out_features
        and w.down.shape[0] <= rows[m].rank
        and w.kernel == rows[m].kernel
        for m, w in lora.modules.items()
    ):
        return  # the fast path: this runs once per LoRA on bank ingest
    where = lora.path or "LoRA"
    missing = [m for m in layout.modules if m not in lora.modules]
    if missing:
        raise LorasynthError(
            f"{where}: layout mismatch: module {missing[0]!r} of {layout.describe()} is missing "
            f"({len(missing)} missing in all)"
        )
    for module, w in lora.modules.items():
        if module not in rows:
            raise LorasynthError(
                f"{where}: layout mismatch: module {module!r} is not in {layout.describe()}"
            )
        row = rows[module]
        shape = (int(w.down.shape[1]), int(w.up.shape[0]))
        if shape != (row.in_features, row.out_features):
            raise LorasynthError(
                f"{where}: layout mismatch in {module!r}: (in, out) = {shape}, layout expects "
                f"{(row.in_features, row.out_features)}"
            )
        if w.rank > row.rank:
            raise LorasynthError(
                f"{where}: rank {w.rank} of {module!r} exceeds the layout's rank {row.rank}"
            )
        if w.kernel != row.kernel:
            raise LorasynthError(
                f"{where}: layout mismatch in {module!r}: kernel {w.kernel}, layout expects "
                f"{row.kernel} (None: a linear layer)"
            )


# ---- writing ------------------------------------------------------------------------------


def write_lora(
    path: str | os.PathLike[str],
    lora: LoraFile,
    to: str = "diffusers",
    title: str | None = None,
    provenance: Mapping[str, str] | None = None,
) -> Path:
    """Write `lora` as a diffusers or kohya safetensors file that the usual loaders accept.

    diffusers files carry no alpha, so the scale is folded into the up weights; kohya files
    carry an explicit alpha per module. Metadata: modelspec plus `lorasynth.*` provenance.
    """
    if to not in WRITABLE_FORMATS:
        raise LorasynthError(
            f"cannot write format {to!r}; choose one of {', '.join(WRITABLE_FORMATS)}"
        )
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for module, w in lora.modules.items():
        down_key, up_key = _keys(module, to)
        down, up = w.file_weights()
        if to == "diffusers":
            tensors[down_key] = down
            tensors[up_key] = up * w.scale
        else:
            tensors[down_key] = down
            tensors[up_key] = up
            tensors[kohya_name(module) + ".alpha"] = torch.tensor(float(w.alpha))
    layout = lora.layout()
    metadata = _output_metadata(lora, layout, to, title or path.stem, provenance or {})
    save_tensors(path, tensors, metadata)
    return path


def _output_metadata(
    lora: LoraFile, layout: LoraLayout, to: str, title: str, provenance: Mapping[str, str]
) -> dict[str, str]:
    # Carry over lorasynth provenance from the source, then the caller's, then the facts.
    meta = {k: v for k, v in lora.metadata.items() if k.startswith("lorasynth.")}
    for key, value in provenance.items():
        meta[key if key.startswith("lorasynth.") else f"lorasynth.{key}"] = str(value)
    meta.update(
        {
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": lora.architecture,
            "modelspec.implementation": "diffusers",  # module names: diffusers' UNet paths
            "modelspec.title": title,
            "lorasynth.layout_hash": layout.hash,
            "lorasynth.layout": layout.to_json(),
            "lorasynth.format": to,
        }
    )
    facts = _ARCH_FACTS.get(meta["modelspec.architecture"])
    if facts is not None:
        meta["modelspec.resolution"], meta["modelspec.prediction_type"] = facts[:2]
    if to == "kohya":
        if facts is not None:
            meta["ss_base_model_version"] = facts[2]
        alphas = Counter(w.alpha for w in lora.modules.values())
        meta.update(
            {
                "ss_network_module": "networks.lora",
                "ss_network_dim": str(layout.max_rank),
                "ss_network_alpha": str(alphas.most_common(1)[0][0]),
            }
        )
    return meta


def inspect_lora(lora: LoraFile) -> dict:
    """The `lora inspect --json` summary."""
    layout = lora.layout()
    alphas = {w.alpha for w in lora.modules.values()}
    return {
        "format": lora.format,
        "architecture": lora.architecture,
        "modules": len(lora.modules),
        "rank": layout.max_rank,
        "alpha": alphas.pop() if len(alphas) == 1 else None,
        "params": lora.params,
        "layout_hash": layout.hash,
    }

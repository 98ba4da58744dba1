"""Synthesis model files: weights in safetensors, config and provenance hashes in the header.

Every file names the layout, normaliser and (for priors) embedder it was trained with; loading
it next to a different bank, layout or embedder is an error that says which one differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lorasynth.errors import LorasynthError
from lorasynth.lora.safetensors_io import load_tensors, save_half_copy, save_tensors
from lorasynth.models.denoiser import Denoiser, DenoiserConfig
from lorasynth.models.vae import LoraVAE, LoraVAEConfig


def weights_hash(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Provenance:
    """What a model was trained against; compared field by field at load time."""

    layout_hash: str
    normaliser_hash: str
    embedder_id: str = ""  # priors only
    representation: str = ""  # priors only: "vae:<hash>", "pca:<hash>", "ridge:<hash>" or "raw"
    domain: str = "faces"  # subject domain of the bank (files from before domains: faces)
    # Priors only: how many of the bank's subjects it was trained on (its first N), as text like
    # every metadata value; "" in files from before session 11 (the bank's size then).
    subjects: str = ""

    def check(self, path: Path, **expected: str | None) -> None:
        names = {
            "layout_hash": "layout",
            "normaliser_hash": "normaliser (bank)",
            "embedder_id": "embedder",
            "representation": "representation (VAE/PCA/ridge)",
            "domain": "domain",
        }
        for field, want in expected.items():
            have = getattr(self, field)
            if want is not None and have != want:
                raise LorasynthError(
                    f"{path}: trained with {names[field]} {have!r} but used with {want!r}; "
                    "use the matching bank/embedder or retrain"
                )


def save_half_model_copy(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
) -> None:
    """The shipped copy of a model file: its weights (model.*) and a PCA/ridge basis (already
    float16-exact, see train_prior) as float16, latent statistics kept float32; `_load`
    upcasts. The weights_hash still names the model."""
    save_half_copy(
        src,
        dst,
        keys=lambda key: key.startswith("model.") or key == "extra.pca_components",
        metadata=metadata,
    )


def save_model(
    path: str | os.PathLike[str],
    kind: str,
    module: torch.nn.Module,
    config: dict,
    provenance: Provenance,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> str:
    """Write a model file; returns its weights hash (which names it in other files)."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
    tensors.update(
        {f"extra.{k}": v.detach().contiguous() for k, v in (extra_tensors or {}).items()}
    )
    digest = weights_hash(tensors)
    meta = {
        "kind": kind,
        "config": json.dumps(config, sort_keys=True),
        "weights_hash": digest,
        **{f"lorasynth.{k}": v for k, v in provenance.__dict__.items()},
    }
    save_tensors(path, tensors, meta)
    return digest


def _load(path: str | os.PathLike[str], kind: str) -> tuple[dict, dict, Provenance, dict, str]:
    tensors, meta = load_tensors(path)
    if meta.get("kind") != kind:
        raise LorasynthError(
            f"{path}: is a {meta.get('kind', 'unknown')!r} file, expected {kind!r}"
        )
    try:
        config = json.loads(meta["config"])
        provenance = Provenance(
            **{
                k.removeprefix("lorasynth."): v
                for k, v in meta.items()
                if k.startswith("lorasynth.")
            }
        )
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise LorasynthError(f"{path}: malformed model header ({exc})") from None
    if provenance.subjects and not provenance.subjects.isdigit():
        raise LorasynthError(
            f"{path}: malformed model header (subjects {provenance.subjects!r} is not a count)"
        )
    # Shipped files store weights as float16 (save_half_copy); models run in float32.
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return config, weights, provenance, extra, meta.get("weights_hash", "")


def load_vae(path: str | os.PathLike[str]) -> tuple[LoraVAE, Provenance, str]:
    config, weights, provenance, _, digest = _load(path, "lorasynth-lora-vae")
    model = LoraVAE(LoraVAEConfig(**config))
    model.load_state_dict(weights)
    return model.eval(), provenance, digest


def load_prior(
    path: str | os.PathLike[str],
) -> tuple[Denoiser, Provenance, dict[str, torch.Tensor], str]:
    """Denoiser, provenance, extra tensors (latent mean/std, PCA basis...), weights hash."""
    config, weights, provenance, extra, digest = _load(path, "lorasynth-prior")
    model = Denoiser(DenoiserConfig(**config))
    model.load_state_dict(weights)
    return model.eval(), provenance, extra, digest

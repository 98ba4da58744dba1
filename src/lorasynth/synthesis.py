"""Zero-shot LoRA synthesis: photo(s) -> embedding -> LoRA, by the prior or a baseline.

Methods (one interface):
- diffusion: sample the conditional prior, decode (VAE/PCA/raw), un-normalise, unflatten;
- nearest:   the bank LoRA whose subject embedding is closest to the photo's;
- lincomb:   a ridge-weighted linear combination of the k nearest bank LoRAs (weights2weights
             style: the bank mean plus weighted deviations), weights fitted in embedding space;
- ridge:     a linear map from embedding to (sign-aligned) LoRA, fitted on the whole bank by
             ridge regression: the strongest zero-shot baseline on the v1 faces bank;
- kernel:    kernel ridge regression from embedding to LoRA over the whole bank (weights over
             every bank LoRA from embedding similarity; see kernel.py);
- optimize:  latent optimisation against the photo through the UNet (see optimize.py; seconds);
- trained:   an ordinary DreamBooth-style LoRA training run on the photo(s): the slow upper bound.
Models are loaded once (`Synthesizer.load`); each call then costs milliseconds.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lorasynth.bank import NORMALISER_FILE, Bank, Normaliser
from lorasynth.bank.conditions import CONDITIONS_FILE, ConditionTable
from lorasynth.domains import DOMAIN_KEY, check_same_domain, embedder_domain, get_domain
from lorasynth.errors import LorasynthError
from lorasynth.faces.embedders import MiniFaceEmbedder, as_face_embedder, load_face_embedder
from lorasynth.faces.photos import Photo, load_photo
from lorasynth.kernel import KernelConfig, KernelRegression
from lorasynth.lincomb import ANCHOR_KEY, ANCHOR_SCALE_KEY, LincombConfig, lincomb_vectors
from lorasynth.lora import LoraFile, unflatten, write_lora
from lorasynth.lora.safetensors_io import read_header
from lorasynth.models.defaults import PRIOR_GUIDANCE, PRIOR_STEPS, check_temperature
from lorasynth.models.representation import (
    LinearSkip,
    PcaRepresentation,
    Representation,
    RidgeRepresentation,
    VaeRepresentation,
    ridge_regression,
)
from lorasynth.models.sampling import sample
from lorasynth.models.store import load_prior, load_vae

METHODS = ("diffusion", "nearest", "lincomb", "ridge", "kernel", "optimize", "trained")
RIDGE_PENALTY = 1e-2  # on the Gram matrix of centred unit embeddings
# A linear map's predictions for unseen subjects shrink toward the bank mean (0.34 of the bank's
# RMS deviation on v1 faces), and identity needs a LoRA's deviation, though not more: its
# deviation is set to this fraction of the bank's. Chosen on 48 validation identities
# (world.calibrate; ID sim as predicted 0.340, at 0.6 / 0.7 / 0.85 / 1.0: 0.471 / 0.492 /
# 0.506 / 0.485).
RIDGE_STRENGTH = 0.85
# kernel's LoRAs come out short too (0.47 of the bank's RMS deviation); chosen on the same 48
# validation identities (session 10, bank of 1,500): ID sim as predicted 0.340, at 0.8 / 0.9 /
# 1.0 / 1.1 / 1.3: 0.525 / 0.548 / 0.556 / 0.559 / 0.529 (lincomb: 0.533).
KERNEL_STRENGTH = 1.1
STRENGTH_KEY = "strength"  # a prior file's metadata: its calibrated strength, if any
# A bank up to this size (float32) is read into memory on first use: kernel's weighted sum over
# the 3,000-subject mini-world bank (390 MB) then takes milliseconds. A larger one (SD1.5 w2w:
# 65k x 99,648 values, 26 GB) stays in its memory-mapped shards and is read row by row.
IN_MEMORY_BANK_BYTES = 1 << 30
STREAM_ROWS = 256  # rows a pass over a large bank reads at a time (33 MB at 32,544 values)


def _strength(path: Path) -> float | None:
    """A prior file's calibrated strength (metadata), if any; a malformed one is an error."""
    value = read_header(path)[0].get("__metadata__", {}).get(STRENGTH_KEY)
    if not value:
        return None
    try:
        strength = float(value)
    except ValueError:
        strength = math.nan
    if not (math.isfinite(strength) and strength > 0):
        raise LorasynthError(
            f"{path}: malformed header: strength {value!r} is not a positive number"
        )
    return strength


@dataclass
class SynthesisResult:
    lora: LoraFile
    method: str
    seed: int
    time_ms: float
    layout_hash: str
    path: Path | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "seed": self.seed,
            "time_ms": round(self.time_ms, 3),
            "layout_hash": self.layout_hash,
            **({"path": str(self.path)} if self.path else {}),
            **self.extra,
        }


def with_strength(vectors: torch.Tensor, normaliser: Normaliser, strength: float) -> torch.Tensor:
    """Vectors (B, D) whose deviation from the bank's mean LoRA is `strength` times the bank's
    RMS deviation (direction kept): a LoRA's identity grows with its deviation, and LoRAs that a
    model predicts for unseen subjects come out short of it."""
    mean = normaliser.mean.to(vectors)
    deviation = vectors - mean
    target = strength * float(normaliser.std.double().norm())
    return mean + deviation * (target / deviation.norm(dim=-1, keepdim=True).clamp_min(1e-12))


@dataclass
class Prior:
    model: torch.nn.Module
    representation: Representation
    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    name: str
    # Deviation of its LoRAs as a fraction of the bank's (with_strength); None: as sampled.
    strength: float | None = None
    skip: LinearSkip | None = None  # a linear map from condition to latent, added when sampling
    # Trained around lincomb's LoRA (PriorTrainConfig.anchor): samples are residuals added to
    # the normalised lincomb vector of the condition, made with this config on the bank.
    anchor: LincombConfig | None = None
    anchor_scale: torch.Tensor | None = None  # (latent,): the anchor's latent is scaled by it
    subjects: int | None = None  # bank subjects it was trained on (None: not recorded)

    @classmethod
    def load(
        cls, path: Path, bank: Bank, normaliser: Normaliser, embedder_id: str, vae_path: Path | None
    ) -> Prior:
        model, provenance, extra, digest = load_prior(path)
        provenance.check(
            path,
            layout_hash=bank.layout_hash,
            normaliser_hash=normaliser.hash,
            embedder_id=embedder_id,
            domain=bank.domain,
        )
        kind = provenance.representation.split(":")[0]
        if kind == "vae":
            if vae_path is None or not vae_path.is_file():
                raise LorasynthError(
                    f"{path}: this prior decodes through a LoRA VAE; give its file (--vae)"
                )
            vae, vae_provenance, vae_digest = load_vae(vae_path)
            vae_provenance.check(
                vae_path, layout_hash=bank.layout_hash, normaliser_hash=normaliser.hash
            )
            rep: Representation = VaeRepresentation(vae, vae_digest)
        elif kind in ("pca", "ridge"):
            basis = PcaRepresentation if kind == "pca" else RidgeRepresentation
            rep = basis(extra["pca_mean"], extra["pca_components"])
        else:
            rep = Representation(bank.dim)
        provenance.check(path, representation=rep.id)
        strength = _strength(path)
        return cls(
            model,
            rep,
            extra["latent_mean"],
            extra["latent_std"],
            f"{path.stem}:{digest}",
            strength,
            LinearSkip.from_tensors(extra),
            LincombConfig.from_tensor(extra[ANCHOR_KEY]) if ANCHOR_KEY in extra else None,
            extra.get(ANCHOR_SCALE_KEY),
            int(provenance.subjects) if provenance.subjects else None,
        )

    @torch.no_grad()
    def sample_normalised(
        self,
        cond: torch.Tensor,
        steps: int,
        guidance: float,
        seed: int,
        temperature: float = 1.0,
        anchor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalised vectors (B, D) for conditions (B, E). An anchored prior needs `anchor`:
        the conditions' normalised lincomb vectors (Synthesizer.sample_prior makes them)."""
        if (anchor is None) != (self.anchor is None):
            raise LorasynthError(
                f"prior {self.name} "
                + (
                    "samples around lincomb's LoRA: give its anchor"
                    if anchor is None
                    else "has no anchor"
                )
            )
        gen = torch.Generator().manual_seed(seed)
        x = sample(
            self.model,
            cond,
            self.representation.dim,
            self.model.config.target,
            steps,
            guidance,
            0.0,
            gen,
            temperature,
        )
        latent = x * self.latent_std + self.latent_mean
        if self.skip is not None:
            latent = latent + self.skip(cond)
        if anchor is not None:
            # in the latent, the anchor counts scale times (the sample is the residual from
            # that); outside the latent's span it counts whole
            rep = self.representation
            if self.anchor_scale is not None:
                latent = latent + (self.anchor_scale - 1) * rep.encode(anchor)
            return anchor + rep.decode_difference(latent)
        return self.representation.decode(latent)


class Synthesizer:
    """Everything synthesis needs, loaded once: bank, normaliser, conditions, embedder, prior."""

    def __init__(
        self,
        bank: Bank,
        embedder,
        prior: Prior | None = None,
        lincomb_k: int = 32,
        lincomb_ridge: float = 0.05,
    ) -> None:
        self.bank = bank
        self.layout = bank.layout
        self.normaliser = Normaliser.load(bank.path / NORMALISER_FILE, bank.layout_hash)
        self.embedder = embedder  # a MiniEmbedder or any lorasynth.faces FaceEmbedder
        self.domain = bank.domain  # lorasynth.domains: whose subjects the bank's LoRAs are
        made_for = embedder_domain(embedder.embedder_id)
        if made_for is not None:
            what = f"embedder {embedder.embedder_id}"
            check_same_domain(f"bank {bank.path}", bank.domain, what, made_for)
        self.faces = as_face_embedder(embedder)
        table = ConditionTable.load(bank.path / CONDITIONS_FILE, embedder.embedder_id)
        self.bank_embeddings = table.mean_embeddings_for(bank.ids)
        self.prior = prior
        self.lincomb_k = lincomb_k
        self.lincomb_ridge = lincomb_ridge
        self._vectors: torch.Tensor | None = None
        # Whether the bank baselines read the whole bank into memory (see IN_MEMORY_BANK_BYTES).
        self.bank_in_memory = len(bank) * bank.dim * 4 <= IN_MEMORY_BANK_BYTES
        self._ridge: tuple[torch.Tensor, torch.Tensor] | None = None
        self._kernel: tuple[KernelRegression, torch.Tensor] | None = None
        self.pipe = None  # the base pipeline, needed only by `optimize` (loaded on first use)
        self.base: str | os.PathLike[str] = "mini"  # what `pipe` is loaded from
        self.optimize_steps = 60

    @classmethod
    def load(
        cls,
        bank: str | os.PathLike[str] | None = None,
        prior: str | os.PathLike[str] | None = None,
        vae: str | os.PathLike[str] | None = None,
        embedder: str | None = None,
        base: str | os.PathLike[str] = "mini",
        model_dir: str | os.PathLike[str] | None = None,
        domain: str | None = None,
    ) -> Synthesizer:
        """Defaults: the shipped mini-world (bank, default prior and VAE, mini-arcface).

        `base` ('mini', a diffusers folder or an SD1.5 .safetensors checkpoint) is the model the
        LoRAs are for: checked against the bank's layout now, loaded by optimize/trained.
        `embedder` / `model_dir`: see lorasynth.faces.load_face_embedder; the bank's conditions
        and the prior must come from the same embedder (checked by id).
        `domain` (default: the bank's, else faces) picks the shipped files of that domain
        (faces: mini-arcface) and must match the bank and the prior.
        """
        dom = get_domain(domain if domain or bank is None else Bank(bank).domain)
        root = dom.root() / "synthesis"
        bank_store = Bank(bank or dom.root() / "bank")
        check_same_domain(f"bank {bank_store.path}", bank_store.domain, "the request", dom.name)
        face_embedder = _load_embedder(dom, embedder or dom.conditioner, model_dir)
        if isinstance(face_embedder, MiniFaceEmbedder):
            face_embedder = face_embedder.model  # what evaluate and the optimizer expect
        synth = cls(bank_store, face_embedder)
        if str(base) != "mini":
            from lorasynth.generate import check_fits_base

            check_fits_base(bank_store.layout, base)
        # The mini base of a domain is its own pipeline (assets/mini-world[/<domain>]/pipeline).
        synth.base = dom.root() / "pipeline" if str(base) == "mini" and dom.asset_subdir else base
        # The shipped prior belongs to the shipped bank: another bank needs its own --prior.
        prior_path = Path(prior) if prior else root / "prior.safetensors"
        if prior and not prior_path.is_file():
            raise LorasynthError(f"{prior_path}: no such prior file")
        if prior or (bank is None and prior_path.is_file()):
            vae_path = Path(vae) if vae else root / "lora-vae.safetensors"
            synth.prior = Prior.load(
                prior_path, bank_store, synth.normaliser, face_embedder.embedder_id, vae_path
            )
        return synth

    @property
    def vectors(self) -> torch.Tensor:
        """All bank vectors, read into memory on first use (the bank baselines go through
        `rows`, which does so only for a bank within IN_MEMORY_BANK_BYTES)."""
        if self._vectors is None:
            self._vectors = self.bank.vectors()
        return self._vectors

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """Bank rows by index (any shape of indices -> that shape + (D,)), float32."""
        if self.bank_in_memory:
            return self.vectors[indices]
        unique, inverse = indices.reshape(-1).unique(return_inverse=True)
        gathered = self.bank.gather(unique.tolist())[inverse]
        return gathered.reshape(*indices.shape, self.bank.dim)

    def _aligned_sum(self, weights: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """weights (B, N) @ the sign-aligned bank (N, D), reading a large bank from its shards:
        only the rows any weight uses when few do (kernel's nearest subjects), else one pass."""
        nm = self.normaliser
        if self.bank_in_memory:
            return nm.aligned_sum(weights, self.vectors, signs)
        used = weights.abs().sum(0).nonzero().squeeze(1)
        if 4 * len(used) < weights.shape[1]:
            return nm.aligned_sum(weights[:, used], self.rows(used), signs[used])
        out = torch.zeros(len(weights), self.bank.dim)
        start = 0
        for batch in self.bank.iter_batches(STREAM_ROWS):
            part = slice(start, start + len(batch))
            out += nm.aligned_sum(weights[:, part], batch, signs[part])
            start += len(batch)
        return out

    # ---- embeddings ------------------------------------------------------------------------
    def embed(self, photos: Sequence[Photo], face_index: int | None = None) -> torch.Tensor:
        """One L2-normalised condition from one or more photos (mean in embedding space).

        Each photo's largest face is used, or its `face_index`-th (largest first); several
        faces, small or blurry faces are FaceWarnings, no face is a LorasynthError.
        """
        return torch.from_numpy(self.faces.embed_mean(photos, face_index))

    # ---- methods ---------------------------------------------------------------------------
    def vectors_for(
        self,
        cond: torch.Tensor,
        method: str = "diffusion",
        seed: int = 0,
        guidance: float = PRIOR_GUIDANCE,
        steps: int = PRIOR_STEPS,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Canonical vectors (B, D) for condition embeddings (B, E); `temperature` scales the
        prior's starting noise (samplers.sample)."""
        if method == "diffusion":
            if self.prior is None:
                raise LorasynthError(
                    "no prior loaded: train one (`lorasynth train prior`) or pick --method "
                    "nearest|lincomb|ridge|kernel"
                )
            vectors = self.normaliser.decode(
                self.sample_prior(self.prior, cond, steps, guidance, seed, temperature)
            )
            if self.prior.strength is not None:
                vectors = with_strength(vectors, self.normaliser, self.prior.strength)
            return vectors
        if method == "nearest":
            return self.rows((cond @ self.bank_embeddings.T).argmax(dim=1))
        if method == "lincomb":
            return self.lincomb_vectors(cond)
        if method == "ridge":
            return with_strength(self.ridge_vectors(cond), self.normaliser, RIDGE_STRENGTH)
        if method == "kernel":
            return with_strength(self.kernel_vectors(cond), self.normaliser, KERNEL_STRENGTH)
        raise LorasynthError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")

    def sample_prior(
        self,
        prior: Prior,
        cond: torch.Tensor,
        steps: int = PRIOR_STEPS,
        guidance: float = PRIOR_GUIDANCE,
        seed: int = 0,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """`prior`'s normalised vectors (B, D) for conditions (B, E), before strength; an
        anchored prior's lincomb vectors are made on this bank."""
        anchor = None
        if prior.anchor is not None:
            anchor = self.normaliser.encode(self.lincomb_vectors(cond, prior.anchor))
        return prior.sample_normalised(cond, steps, guidance, seed, temperature, anchor)

    def optimize(
        self, photos: Sequence[Photo], seed: int = 0, steps: int | None = None
    ) -> torch.Tensor:
        """The latent-optimisation baseline for one subject (needs the prior and the pipeline)."""
        from lorasynth.optimize import optimize_latent

        if self.prior is None:
            raise LorasynthError("method optimize fits the prior's latent: no prior is loaded")
        pipe = self._pipeline()
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        images = np.stack([_photo_array(p, size) for p in photos])
        return optimize_latent(self, pipe, images, steps=steps or self.optimize_steps, seed=seed)

    def train(self, photos: Sequence[Photo], seed: int = 0, steps: int = 200) -> torch.Tensor:
        """A real per-subject LoRA training run on the photo(s), in the bank's layout."""
        from lorasynth.lora import flatten
        from lorasynth.world.lora_trainer import LoraTrainConfig, train_subject_loras

        pipe = self._pipeline()
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        images = np.stack([_photo_array(p, size) for p in photos])[None]
        row = self.layout.rows[0]
        preset = (
            "w2w" if all(r.module.endswith(("to_q", "to_v")) for r in self.layout.rows) else "attn"
        )
        config = LoraTrainConfig(
            preset=preset, rank=row.rank, steps=steps, samples_per_subject=4, seed=seed
        )
        loras, _ = train_subject_loras(
            pipe,
            self.layout,
            images,
            [[get_domain(self.domain).subject_prompt] * len(photos)],
            config,
            progress=False,
        )
        return flatten(loras[0], self.layout)

    def _pipeline(self):
        if self.pipe is None:
            from lorasynth.generate import load_base

            self.pipe = load_base(self.base)
        return self.pipe

    def ridge_vectors(self, cond: torch.Tensor) -> torch.Tensor:
        """The ridge map's vectors (B, D) for embeddings (B, E), before with_strength."""
        centre, weights = self._ridge_map()
        return self.normaliser.mean + (cond.float() - centre) @ weights

    def _ridge_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding centre (E,), weights (E, D)): ridge regression of the bank's sign-aligned
        vectors on its subjects' embeddings, fitted on first use in one pass over the bank."""
        if self._ridge is None:
            aligned = (self.normaliser.align(b) for b in self.bank.iter_batches(1024))
            centre, weights, _ = ridge_regression(self.bank_embeddings, aligned, RIDGE_PENALTY)
            self._ridge = (centre.float(), weights.float())
        return self._ridge

    def kernel_vectors(self, cond: torch.Tensor) -> torch.Tensor:
        """kernel's vectors (B, D) for embeddings (B, E), before with_strength."""
        kernel, signs = self._kernel_map()
        return kernel.vectors(cond, lambda w: self._aligned_sum(w, signs), self.normaliser.mean)

    def _kernel_map(self) -> tuple[KernelRegression, torch.Tensor]:
        """The bank's kernel regression, made on first use (not timed, like ridge), and its
        rows' alignment flips (aligning the whole bank anew for every LoRA cost 0.6 s)."""
        if self._kernel is None:
            kernel = KernelRegression(self.bank_embeddings, KernelConfig())
            batches = (
                self.vectors.split(STREAM_ROWS)
                if self.bank_in_memory
                else self.bank.iter_batches(STREAM_ROWS)
            )
            signs = torch.cat([self.normaliser.block_signs(b) for b in batches])
            self._kernel = (kernel, signs)
        return self._kernel

    def lincomb_vectors(
        self, cond: torch.Tensor, config: LincombConfig | None = None
    ) -> torch.Tensor:
        """lincomb's vectors (B, D) for condition embeddings (B, E) (see lorasynth.lincomb)."""
        return lincomb_vectors(
            cond,
            self.bank_embeddings,
            lambda rows: self.normaliser.align(self.rows(rows)),
            self.normaliser.mean,
            config or LincombConfig(self.lincomb_k, self.lincomb_ridge),
        )

    def synthesize(
        self,
        photos: Sequence[Photo],
        method: str = "diffusion",
        seed: int = 0,
        guidance: float = PRIOR_GUIDANCE,
        steps: int = PRIOR_STEPS,
        out: str | os.PathLike[str] | None = None,
        fmt: str = "diffusers",
        face_index: int | None = None,
        temperature: float = 1.0,
    ) -> SynthesisResult:
        """Photo(s) -> LoRA (written to `out` if given); time_ms covers photo bytes to file."""
        check_temperature(method, temperature)
        if method == "ridge":
            self._ridge_map()  # fitted once per Synthesizer, like loading a model: not timed
        if method == "kernel":
            self._kernel_map()
        start = time.perf_counter()
        if method == "optimize":
            vector = self.optimize(photos, seed)
        elif method == "trained":
            vector = self.train(photos, seed)
        else:
            cond = self.embed(photos, face_index)[None]
            vector = self.vectors_for(cond, method, seed, guidance, steps, temperature)[0]
        meta = self._provenance(method, seed, guidance, steps, temperature)
        lora = unflatten(vector, self.layout, meta)
        path = Path(out) if out else None
        if path is not None:
            write_lora(path, lora, to=fmt, title=f"lorasynth {method}")
        elapsed = (time.perf_counter() - start) * 1000
        return SynthesisResult(lora, method, seed, elapsed, self.layout.hash, path)

    def _provenance(
        self, method: str, seed: int, guidance: float, steps: int, temperature: float = 1.0
    ) -> dict[str, str]:
        meta = {
            "lorasynth.method": method,
            "lorasynth.seed": str(seed),
            "lorasynth.embedder_id": self.embedder.embedder_id or "",
            "lorasynth.normaliser_hash": self.normaliser.hash,
            f"lorasynth.{DOMAIN_KEY}": self.domain,
        }
        if method == "diffusion" and self.prior is not None:
            meta.update(
                {
                    "lorasynth.prior": self.prior.name,
                    "lorasynth.guidance": str(guidance),
                    "lorasynth.steps": str(steps),
                }
            )
            if temperature != 1.0:  # files from before temperature existed read as 1
                meta["lorasynth.temperature"] = str(temperature)
        return meta


def _load_embedder(dom, name: str, model_dir: str | os.PathLike[str] | None):
    """An embedder by backend name or path; a domain's bare mini names come from its folder,
    `clip-vision` from the CLIP vision model folder `model_dir`."""
    if name == "clip-vision":
        from lorasynth.conditions.clip_vision import ClipVisionEncoder

        if model_dir is None:
            raise LorasynthError("--embedder clip-vision needs --model-dir: a CLIP vision folder")
        return ClipVisionEncoder(model_dir)
    if dom.asset_subdir and name in dom.embedders:
        name = str(dom.embedder_path(name))
    return load_face_embedder(name, model_dir)


def _photo_array(photo: Photo, size: int) -> np.ndarray:
    return load_photo(photo, size)

"""Subject domains: what a "subject" is (a face, a product) is configuration, not a fork.

A `Domain` names everything the shared code path needs to know about one kind of subject: how
to draw it (renderer, attribute and nuisance samplers), how prompts name it ("a photo of sks
product") and its nuisances, which embedders condition and judge it, and where its shipped
files live. Every bank, checkpoint and LoRA file records its domain; files written before
domains existed have none and are read as "faces".

Asset folders: faces keep `assets/mini-world/` exactly as shipped (nothing moves, old paths and
manifests stay valid); every other domain gets a subfolder, `assets/mini-world/<name>/`, with
the same layout inside (embedders/, pipeline/, bank/, bank-heldout/, synthesis/ and its own
manifest.json, checked by `world verify` along with the faces manifest). Faces assets and
tests need no change, and no faces file can collide with another domain's. Build scratch
follows the same rule under `build/mini-world/`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lorasynth.errors import LorasynthError
from lorasynth.paths import build_dir, mini_world_dir
from lorasynth.world import attributes as face_attributes
from lorasynth.world import products
from lorasynth.world.identities import (
    BANK_HELDOUT_START,
    BANK_TRAIN_START,
    CONDITION_PHOTOS,
    EVAL_CONDITION_PHOTOS,
    EVAL_REFERENCE_PHOTOS,
    LORA_TRAINING_PHOTOS,
    MODEL_TRAINING_START,
)

DEFAULT_DOMAIN = "faces"
DOMAIN_KEY = "domain"  # the metadata / manifest key, everywhere


@dataclass(frozen=True)
class Domain:
    """One kind of subject. Renderers are pure functions of (attributes, nuisance, size)."""

    name: str
    noun: str  # the word prompts use: "a photo of sks <noun>"
    asset_subdir: str  # "" keeps the domain at the mini-world's root (faces)
    conditioner: str  # embedder whose embeddings condition the prior
    judge: str  # independent embedder that only scores (other architecture, other seed)
    attribute_names: tuple[str, ...]
    identity_attributes: Callable[[int], Any]
    nuisance_rng: Callable[[int, int], np.random.Generator]
    sample_nuisance: Callable[[np.random.Generator], Any]
    render: Callable[[Any, Any, int], np.ndarray]
    caption: Callable[..., str]  # caption(nuisance, subject=...) naming the nuisances
    grid_nuisances: Callable[[str], list[Any]]  # a row of captioned variants for a background
    # Seed ranges and photo streams (identities.py): the same numbers in every domain; each
    # domain's generators carry their own stream tags, so the subjects still differ.
    bank_train_start: int = BANK_TRAIN_START
    bank_heldout_start: int = BANK_HELDOUT_START
    model_training_start: int = MODEL_TRAINING_START
    lora_training_photos: int = LORA_TRAINING_PHOTOS
    condition_photos: int = CONDITION_PHOTOS
    eval_condition_photos: int = EVAL_CONDITION_PHOTOS
    eval_reference_photos: int = EVAL_REFERENCE_PHOTOS

    @property
    def subject_prompt(self) -> str:
        """The DreamBooth-style prompt of a bank LoRA's subject."""
        return f"a photo of sks {self.noun}"

    @property
    def generic_prompt(self) -> str:
        """The subject phrase of the pipeline's training captions."""
        return f"a photo of a {self.noun}"

    @property
    def embedders(self) -> tuple[str, str]:
        return (self.conditioner, self.judge)

    def root(self) -> Path:
        """The domain's shipped files (assets/mini-world[/<subdir>])."""
        return mini_world_dir() / self.asset_subdir if self.asset_subdir else mini_world_dir()

    def build_root(self) -> Path:
        """The domain's build scratch (build/mini-world[/<subdir>])."""
        base = build_dir() / "mini-world"
        return base / self.asset_subdir if self.asset_subdir else base

    def fullest_bank(self, name: str) -> Path:
        """The bank folder `name` ("bank", "bank-heldout") that holds the most rows: the full
        one a bank stage trained in build/ when it outgrew what ships (the shipped rows are its
        first), else the shipped one (which may not exist)."""
        from lorasynth.bank import Bank

        shipped, built = self.root() / name, self.build_root() / name
        if not (built / "manifest.json").is_file():
            return shipped
        if not (shipped / "manifest.json").is_file():
            return built
        return built if len(Bank(built)) > len(Bank(shipped)) else shipped

    def embedder_path(self, name: str) -> Path:
        return self.root() / "embedders" / f"{name}.safetensors"

    def built_embedder_path(self, name: str) -> Path:
        """`embedder_path`, which must exist; else an error naming the build stage."""
        path = self.embedder_path(name)
        if not path.is_file():
            raise LorasynthError(
                f"{path}: no such embedder file; build it with "
                f"`lorasynth world build --domain {self.name} --stage embedders`"
            )
        return path

    def check_embedder(self, embedder_id: str, other: str) -> None:
        """Refuse a mini embedder trained on another domain (`other` names the asker)."""
        made_for = embedder_domain(embedder_id)
        if made_for is not None:
            check_same_domain(f"embedder {embedder_id}", made_for, other, self.name)

    def render_many(self, attrs: list[Any], nuisances: list[Any], size: int = 32) -> np.ndarray:
        """Subject i is (attrs[i], nuisances[i]) -> (B, size, size, 3) uint8."""
        from lorasynth.world.render_common import render_batch

        mismatch = "{attrs} attribute sets and {nuisances} nuisances: give one each"
        return render_batch(self.render, attrs, nuisances, size, mismatch)

    def iter_identity(
        self, seed: int, n: int, nuisance_seed: int = 0, size: int = 32
    ) -> Iterator[tuple[np.ndarray, Any]]:
        """n photos of subject `seed`, one at a time, with their nuisances."""
        from lorasynth.world.render_common import iter_photos

        return iter_photos(
            self.render,
            self.identity_attributes,
            self.nuisance_rng,
            self.sample_nuisance,
            seed,
            n,
            nuisance_seed,
            size,
        )

    def render_identity(
        self, seed: int, n: int, nuisance_seed: int = 0, size: int = 32
    ) -> list[tuple[np.ndarray, Any]]:
        return list(self.iter_identity(seed, n, nuisance_seed, size))


def _face_grid_nuisances(background: str) -> list[face_attributes.Nuisance]:
    Nuisance = face_attributes.Nuisance
    return [
        Nuisance(background=background),
        Nuisance(background=background, smile=0.9),
        Nuisance(background=background, glasses=True),
        Nuisance(background=background, hat=True),
        Nuisance(background=background, yaw=-0.8),
        Nuisance(background=background, yaw=0.8),
        Nuisance(background=background, eye_openness=0.1),
        Nuisance(background=background),
    ]


def _render_face(attrs: Any, nuisance: Any, size: int = 32) -> np.ndarray:
    from lorasynth.world.render import render_face

    return render_face(attrs, nuisance, size)


def _render_product(attrs: Any, nuisance: Any, size: int = 32) -> np.ndarray:
    from lorasynth.world.render_products import render_product

    return render_product(attrs, nuisance, size)


FACES = Domain(
    name="faces",
    noun="person",
    asset_subdir="",
    conditioner="mini-arcface",
    judge="mini-eval",
    attribute_names=face_attributes.ATTRIBUTE_NAMES,
    identity_attributes=face_attributes.identity_attributes,
    nuisance_rng=face_attributes.nuisance_rng,
    sample_nuisance=face_attributes.sample_nuisance,
    render=_render_face,
    caption=face_attributes.caption,
    grid_nuisances=_face_grid_nuisances,
)

PRODUCTS = Domain(
    name="products",
    noun="product",
    asset_subdir="products",
    conditioner="mini-style",
    judge="mini-style-eval",
    attribute_names=products.PRODUCT_ATTRIBUTE_NAMES,
    identity_attributes=products.product_attributes,
    nuisance_rng=products.product_nuisance_rng,
    sample_nuisance=products.sample_product_nuisance,
    render=_render_product,
    caption=products.product_caption,
    grid_nuisances=products.product_grid_nuisances,
)

DOMAINS: dict[str, Domain] = {d.name: d for d in (FACES, PRODUCTS)}


def get_domain(name: str | Domain | None = None) -> Domain:
    """A registered domain by name (None: faces)."""
    if isinstance(name, Domain):
        return name
    key = DEFAULT_DOMAIN if name is None else name
    if key not in DOMAINS:
        raise LorasynthError(f"unknown domain {key!r}; choose one of {', '.join(DOMAINS)}")
    return DOMAINS[key]


def domain_name(value: str | None) -> str:
    """A stored domain value; missing or empty (files from before domains) means faces."""
    return value or DEFAULT_DOMAIN


def embedder_domain(embedder_id: str | None) -> str | None:
    """The domain whose mini embedder made `embedder_id` ("mini-style/<hash>"), if it is one."""
    name = (embedder_id or "").split("/", 1)[0]
    for domain in DOMAINS.values():
        if name in domain.embedders:
            return domain.name
    return None


def check_same_domain(what: str, have: str | None, other: str, want: str | None) -> None:
    """Refuse to mix subject domains: `what` is domain `have`, `other` is domain `want`."""
    have, want = domain_name(have), domain_name(want)
    if have != want:
        raise LorasynthError(
            f"domain mismatch: {what} is domain {have!r} but {other} is domain {want!r}; "
            "use files of one domain (--domain)"
        )


def load_mini_embedder(domain: str | Domain | None = None, name: str | None = None):
    """A mini-world embedder of `domain` (default: its conditioner) by bare name from the
    domain's folder, or from a .safetensors path; refuses one trained on another domain."""
    import os

    from lorasynth.faces.mini import load_embedder

    dom = get_domain(domain)
    name = name or dom.conditioner
    bare = os.sep not in name and "/" not in name and not name.endswith(".safetensors")
    if bare and dom.asset_subdir:
        embedder = load_embedder(dom.built_embedder_path(name))
    else:
        embedder = load_embedder(name)  # faces' bare names resolve to assets/mini-world/
    dom.check_embedder(embedder.embedder_id, "the request")
    return embedder

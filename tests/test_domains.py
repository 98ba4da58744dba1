"""The domain registry: faces stays as shipped, products is the same code path."""

from __future__ import annotations

import numpy as np
import pytest

from lorasynth.domains import (
    DOMAINS,
    FACES,
    PRODUCTS,
    check_same_domain,
    domain_name,
    embedder_domain,
    get_domain,
)
from lorasynth.errors import LorasynthError
from lorasynth.paths import build_dir, mini_world_dir
from lorasynth.world.render import render_identity


def test_registry_names_and_defaults():
    assert set(DOMAINS) == {"faces", "products"}
    assert (
        get_domain() is FACES and get_domain(None) is FACES and get_domain("products") is PRODUCTS
    )
    assert get_domain(PRODUCTS) is PRODUCTS
    with pytest.raises(LorasynthError, match=r"unknown domain 'cats'.*faces, products"):
        get_domain("cats")
    assert FACES.subject_prompt == "a photo of sks person"
    assert PRODUCTS.subject_prompt == "a photo of sks product"
    assert FACES.embedders == ("mini-arcface", "mini-eval")
    assert PRODUCTS.embedders == ("mini-style", "mini-style-eval")


def test_faces_keep_their_folders_products_get_a_subfolder():
    assert FACES.root() == mini_world_dir()
    assert (
        FACES.embedder_path("mini-eval") == mini_world_dir() / "embedders" / "mini-eval.safetensors"
    )
    assert PRODUCTS.root() == mini_world_dir() / "products"
    assert FACES.build_root() == build_dir() / "mini-world"
    assert PRODUCTS.build_root() == build_dir() / "mini-world" / "products"


def test_faces_domain_renders_exactly_what_the_face_renderer_does():
    mine = FACES.render_identity(5, 3, 1)
    theirs = render_identity(5, 3, 1)
    assert all(
        np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(mine, theirs, strict=True)
    )
    image, nuisance = PRODUCTS.render_identity(5, 1)[0]
    assert image.shape == (32, 32, 3)
    assert PRODUCTS.caption(nuisance, subject=PRODUCTS.subject_prompt).startswith(
        "a photo of sks product"
    )
    with pytest.raises(LorasynthError, match="image size"):
        PRODUCTS.render_identity(5, 1, size=4)


def test_missing_domain_means_faces_and_mixing_is_refused():
    assert domain_name(None) == domain_name("") == "faces"
    assert embedder_domain("mini-style/0123") == "products"
    assert embedder_domain("mini-arcface/0123") == "faces"
    assert embedder_domain("clip-vision/abcd") is None
    check_same_domain("bank B", None, "embedder E", "faces")
    with pytest.raises(
        LorasynthError, match="bank B is domain 'products' but embedder E is domain 'faces'"
    ):
        check_same_domain("bank B", "products", "embedder E", None)

"""The domain travels in every bank, condition table and model file; mixing is refused."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lorasynth.bank import NORMALISER_FILE, Bank, Normaliser
from lorasynth.bank.conditions import ConditionTable
from lorasynth.errors import LorasynthError
from lorasynth.lora.safetensors_io import load_tensors, save_tensors
from lorasynth.models.store import load_prior, load_vae
from lorasynth.train import PriorTrainConfig, VAETrainConfig, train_prior, train_vae
from tests.test_train import LAYOUT

VAE_CFG = VAETrainConfig(latent_dim=4, hidden=32, depth=1, steps=4, batch_size=8)
PRIOR_CFG = PriorTrainConfig(
    width=32, depth=1, adalora_rank=2, cond_embed_dim=16, steps=4, batch_size=8
)


def make_bank(folder, domain: str | None, embedder_id: str, table_domain: str | None = None):
    """A small bank (with or without a domain) and a condition table beside it."""
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(12, LAYOUT.size, generator=gen)
    extra = {"domain": domain} if domain else None
    bank = Bank.create(folder / "bank", LAYOUT, extra=extra)
    ids = [f"id-{i:07d}" for i in range(12)]
    bank.append(ids, vectors)
    Normaliser.fit([vectors], LAYOUT.hash).save(bank.path / NORMALISER_FILE)
    emb = torch.nn.functional.normalize(torch.randn(12, 2, 8, generator=gen), dim=-1)
    kwargs = {"domain": table_domain} if table_domain else {}
    ConditionTable(ids, emb, embedder_id, **kwargs).save(folder / "conditions.safetensors")
    return bank, folder / "conditions.safetensors"


def test_bank_domain_is_recorded_and_old_banks_are_faces(tmp_path):
    old, _ = make_bank(tmp_path / "old", None, "mini-arcface/0")
    assert old.domain == "faces" and old.info()["domain"] == "faces"
    new, _ = make_bank(tmp_path / "new", "products", "mini-style/0")
    assert Bank(new.path).domain == "products"
    manifest = json.loads((new.path / "manifest.json").read_text())
    assert manifest["extra"]["domain"] == "products"
    assert Bank.open_or_create(new.path, LAYOUT, extra={"domain": "products"}).domain == "products"
    with pytest.raises(
        LorasynthError, match="domain 'products' but the LoRAs to add is domain 'faces'"
    ):
        Bank.open_or_create(new.path, LAYOUT, extra={"domain": "faces"})


def test_condition_table_domain_defaults_from_its_embedder(tmp_path):
    _, path = make_bank(tmp_path, "products", "mini-style/0", table_domain="products")
    assert ConditionTable.load(path).domain == "products"
    # A table written before domains: no domain key; read from the embedder's name, else faces.
    tensors, meta = load_tensors(path)
    del meta["domain"]
    save_tensors(path, tensors, meta)
    assert ConditionTable.load(path).domain == "products"
    meta["embedder_id"] = "some-embedder/0"
    save_tensors(path, tensors, meta)
    assert ConditionTable.load(path).domain == "faces"


def test_models_carry_the_bank_domain_and_refuse_a_mix(tmp_path):
    bank, cond = make_bank(tmp_path, "products", "mini-style/0", table_domain="products")
    vae_path = train_vae(bank.path, tmp_path / "vae", VAE_CFG, progress=False)
    assert load_vae(vae_path)[1].domain == "products"
    prior_path = train_prior(
        bank.path, cond, tmp_path / "prior", PRIOR_CFG, vae_path=vae_path, progress=False
    )
    _, prov, _, _ = load_prior(prior_path)
    assert prov.domain == "products"
    assert load_tensors(prior_path)[1]["lorasynth.domain"] == "products"
    with pytest.raises(
        LorasynthError, match="trained with domain 'products' but used with 'faces'"
    ):
        prov.check(prior_path, domain="faces")

    # A products bank conditioned by a faces embedder: refused, naming both.
    faces_cond = tmp_path / "faces-conditions.safetensors"
    table = ConditionTable.load(cond)
    replace(table, embedder_id="mini-arcface/0", domain="faces").save(faces_cond)
    with pytest.raises(
        LorasynthError,
        match=r"is domain 'products' but conditions .*mini-arcface.* is domain 'faces'",
    ):
        train_prior(
            bank.path, faces_cond, tmp_path / "mixed", PRIOR_CFG, vae_path=vae_path, progress=False
        )


def test_model_files_without_a_domain_read_as_faces(tmp_path):
    bank, _ = make_bank(tmp_path, None, "mini-arcface/0")
    vae_path = train_vae(bank.path, tmp_path / "vae", VAE_CFG, progress=False)
    tensors, meta = load_tensors(vae_path)
    assert meta.pop("lorasynth.domain") == "faces"
    save_tensors(vae_path, tensors, meta)  # as written before domains existed
    assert load_vae(vae_path)[1].domain == "faces"

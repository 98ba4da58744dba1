"""`world build --domain products`: every stage's plumbing on tiny configs in a temp mini-world."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lorasynth.bank import Bank
from lorasynth.bank.conditions import ConditionTable
from lorasynth.errors import LorasynthError
from lorasynth.faces.mini import EmbedderConfig
from lorasynth.lora.safetensors_io import load_tensors
from lorasynth.models.store import load_prior
from lorasynth.synthesis import STRENGTH_KEY
from lorasynth.world import build as wb
from lorasynth.world.calibrate import STRENGTHS
from tests.tiny_worlds import TINY_PRODUCTS, tiny_style_embedders, use_world


@pytest.fixture
def tiny_world(tmp_path, monkeypatch):
    use_world(monkeypatch, tmp_path)
    tiny_style_embedders(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def test_every_stage_runs_for_products_into_its_own_folder(tiny_world):
    results = wb.build(world=TINY_PRODUCTS, resume=False, progress=False)
    assert list(results) == list(wb.STAGES)
    root = tiny_world / "assets" / "mini-world" / "products"
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["stages"]) == {
        "embedders",
        "pipeline",
        "bank",
        "bank-heldout",
        "conditions",
        "synthesis",
    }
    assert all("--domain products" in s["how_made"] for s in manifest["stages"].values())
    synthesis_files = manifest["stages"]["synthesis"]["measured"]["files"]
    assert synthesis_files["vae"] == "synthesis/lora-vae.safetensors"  # relative: the repo moves
    assert not (tiny_world / "assets" / "mini-world" / "manifest.json").exists()  # faces untouched
    assert (root / "embedders" / "mini-style.safetensors").is_file()
    assert (root / "embedders" / "attribute-regressor.safetensors").is_file()
    assert (
        tiny_world / "build" / "mini-world" / "products" / "pipeline" / "vae-run.json"
    ).is_file()

    bank, heldout = Bank(root / "bank"), Bank(root / "bank-heldout")
    assert (len(bank), len(heldout)) == (3, 2) and bank.domain == heldout.domain == "products"
    assert bank.dtype == heldout.dtype == "float16" and bank.verify() == []
    # The full held-out bank stays in build/ (the evaluation reads it), its first rows ship.
    full = Bank(tiny_world / "build" / "mini-world" / "products" / "bank-heldout")
    assert len(full) == 3 and set(heldout.ids) < set(full.ids)
    assert sorted(heldout.ids) == ["id-0100000", "id-0100001"]  # the split's first seeds
    assert manifest["stages"]["bank-heldout"]["measured"]["identities_built"] == 3
    from lorasynth.domains import get_domain
    from lorasynth.evaluate.run import heldout_bank

    assert heldout_bank(get_domain("products")).path == full.path
    # So does the full train bank; both carry the normaliser fitted on all of it, and their
    # conditions, so the prior trained on the full bank loads against the shipped one.
    build = tiny_world / "build" / "mini-world" / "products"
    full_train = Bank(build / "bank")
    assert len(full_train) == 4 and list(bank.ids) == list(full_train.ids)[:3]
    assert manifest["stages"]["bank"]["measured"]["identities_built"] == 4
    for name in ("normaliser.safetensors", "conditions.safetensors"):
        assert (build / "bank" / name).is_file() and (root / "bank" / name).is_file()
    assert (build / "bank" / "normaliser.safetensors").read_bytes() == (
        root / "bank" / "normaliser.safetensors"
    ).read_bytes()
    assert len(ConditionTable.load(build / "bank" / "conditions.safetensors").ids) == 4
    assert get_domain("products").fullest_bank("bank") == build / "bank"
    assert "build/mini-world/products/bank" not in json.dumps(manifest["files"])
    # The heldout stage scores its trained LoRAs (issue 4's acceptance) next to the base model.
    acceptance = manifest["stages"]["bank-heldout"]["measured"]["acceptance"]
    for row in (acceptance["trained"], acceptance["base"]):
        assert row["identities"] == 2 and 0 <= row["top1"] <= 1 and -1 <= row["id_sim"] <= 1
        assert 0 <= row["prompt_fidelity"] <= 1
    table = ConditionTable.load(root / "bank" / "conditions.safetensors")
    assert table.domain == "products" and table.embedder_id.startswith("mini-style/")
    assert manifest["stages"]["conditions"]["measured"]["embedder"] == "mini-style"
    _, prov, _, _ = load_prior(root / "synthesis" / "prior.safetensors")
    assert prov.domain == "products" and prov.embedder_id == table.embedder_id
    # The prior's strength, chosen on 2 validation subjects, travels in its metadata.
    calibration = manifest["stages"]["synthesis"]["measured"]["calibration"]["adalora-v"]
    assert calibration["subjects"] == 2 and set(calibration["scores"]) == {
        "as sampled",
        *(str(s) for s in STRENGTHS),
    }
    chosen = load_tensors(root / "synthesis" / "prior.safetensors")[1].get(STRENGTH_KEY)
    expected = calibration["chosen"]
    assert chosen == (None if expected is None else str(expected))
    vae_meta = load_tensors(root / "synthesis" / "lora-vae.safetensors")[1]
    assert vae_meta["lorasynth.domain"] == "products"
    assert vae_meta["stored_dtype"] == "float16"  # shipped at half the bytes
    for config in (root / "pipeline").rglob("config.json"):  # no build/ path of this machine
        assert "_name_or_path" not in json.loads(config.read_text()), config

    # Ablation priors: in build/, not shipped; bank sizes at or above the bank's are skipped.
    ablations = tiny_world / "build" / "mini-world" / "products" / "synthesis-ablations"
    assert sorted(p.name for p in ablations.iterdir()) == ["bank2", "latent2", "raw", "x0"]
    assert (ablations / "latent2" / "lora-vae.safetensors").is_file()
    assert not (ablations / "raw" / "lora-vae.safetensors").exists()
    assert load_prior(ablations / "raw" / "prior.safetensors")[1].representation == "raw"
    # each ablation prior's strength is chosen like the shipped ones' (a like-for-like table)
    raw = json.loads((ablations / "raw" / "ablation.json").read_text())
    assert raw["calibration"]["subjects"] == 2
    chosen = load_tensors(ablations / "raw" / "prior.safetensors")[1].get(STRENGTH_KEY)
    assert chosen == (
        None if raw["calibration"]["chosen"] is None else str(raw["calibration"]["chosen"])
    )
    assert not any("ablation" in rel for rel in manifest["files"])

    # Synthesis in the products domain: its bank, prior, conditioner and prompt by default.
    from lorasynth.lora import read_lora
    from lorasynth.synthesis import Synthesizer
    from lorasynth.world.render_products import render_product_identity

    synth = Synthesizer.load(domain="products")
    assert synth.domain == "products" and synth.prior is not None
    photo = render_product_identity(100_000, 1, 2)[0][0]
    for method in ("diffusion", "nearest"):
        out = tiny_world / f"{method}.safetensors"
        synth.synthesize([photo], method, out=out)
        assert read_lora(out).metadata["lorasynth.domain"] == "products"
    assert Synthesizer.load(bank=root / "bank").domain == "products"  # the bank's domain
    with pytest.raises(
        LorasynthError, match="is domain 'products' but the request is domain 'faces'"
    ):
        Synthesizer.load(bank=root / "bank", domain="faces")
    # A faces embedder on a products bank, a products prior beside a faces bank: refused.
    from lorasynth.faces.mini import MiniEmbedder, save_embedder
    from lorasynth.synthesis import Prior

    faces_embedder = tiny_world / "mini-arcface.safetensors"
    save_embedder(
        MiniEmbedder(EmbedderConfig("mini-arcface", "resnet", (8, 16), (1, 1), 16)), faces_embedder
    )
    with pytest.raises(
        LorasynthError, match=r"domain 'products' but embedder mini-arcface/\w+ is domain 'faces'"
    ):
        Synthesizer.load(domain="products", embedder=str(faces_embedder))
    relabelled = tiny_world / "bank-relabelled"
    shutil.copytree(root / "bank", relabelled)
    manifest_path = relabelled / "manifest.json"
    bank_manifest = json.loads(manifest_path.read_text())
    bank_manifest["extra"]["domain"] = "faces"
    manifest_path.write_text(json.dumps(bank_manifest))
    with pytest.raises(
        LorasynthError, match="trained with domain 'products' but used with 'faces'"
    ):
        Prior.load(
            root / "synthesis" / "prior.safetensors",
            Bank(relabelled),
            synth.normaliser,
            table.embedder_id,
            root / "synthesis" / "lora-vae.safetensors",
        )

    info = wb.world_info("products")
    assert info["domain"] == "products" and info["identities_train"] == 4
    assert info["identities_train_shipped"] == 3 and info["identities_heldout_shipped"] == 2
    assert info["embedders"] == ["mini-style", "mini-style-eval"]
    assert wb.world_info()["identities_train"] == 0  # faces: nothing built here


def test_domain_and_world_must_agree():
    with pytest.raises(
        LorasynthError, match="--domain faces but the world config is for 'products'"
    ):
        wb.build(stage="vae", world=TINY_PRODUCTS, domain="faces")
    with pytest.raises(LorasynthError, match="unknown domain"):
        wb.build(stage="vae", domain="cats")
    assert wb.WORLDS["products"].bank.lora.subject_prompt == "a photo of sks product"
    assert wb.WORLDS["faces"] is wb.WORLD and wb.WORLD.domain == "faces"

"""`--domain` on the commands: products render, info, and mixing refused with one-line errors."""

from __future__ import annotations

import json

import torch

from lorasynth.bank import Bank
from lorasynth.bank.ingest import ingest
from lorasynth.lora import LoraLayout, write_lora
from lorasynth.world.products import PRODUCT_ATTRIBUTE_NAMES
from tests.conftest import assert_one_line_error, random_lora, run_cli

LAYOUT = LoraLayout.from_shapes(
    {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (20, 12, 2)}
)


def test_world_render_and_info_for_products(tmp_path):
    out = tmp_path / "renders"
    run_cli(
        "world",
        "render",
        "--domain",
        "products",
        "--identity",
        "3",
        "--n",
        "2",
        "--out",
        out,
        check=True,
    )
    record = json.loads((out / "identity.json").read_text())
    assert record["domain"] == "products" and set(record["attributes"]) == set(
        PRODUCT_ATTRIBUTE_NAMES
    )
    assert all(im["caption"].startswith("a photo of a product") for im in record["images"])
    assert (out / "0001.png").is_file()
    assert_one_line_error(
        run_cli("world", "render", "--domain", "cats", "--identity", "1", "--out", tmp_path / "x"),
        "unknown domain 'cats'",
    )


def test_train_refuses_a_bank_of_another_domain(tmp_path):
    bank = Bank.create(tmp_path / "bank", LAYOUT, extra={"domain": "products"})
    bank.append(["a", "b"], torch.randn(2, LAYOUT.size))
    proc = run_cli("train", "vae", bank.path, "--out", tmp_path / "run", "--domain", "faces")
    assert_one_line_error(proc, "is domain 'products' but --domain is domain 'faces'")


def test_ingest_records_the_domain_and_refuses_files_of_another(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    write_lora(folder / "p.safetensors", random_lora(LAYOUT, 0), provenance={"domain": "products"})
    write_lora(folder / "f.safetensors", random_lora(LAYOUT, 1), provenance={"domain": "faces"})
    write_lora(folder / "x.safetensors", random_lora(LAYOUT, 2))  # from elsewhere: no domain
    report = ingest(folder, tmp_path / "bank", workers=1, progress=False, domain="products")
    assert Bank(tmp_path / "bank").domain == "products"
    assert report.ingested == 2 and len(report.failed) == 1
    assert (
        "f.safetensors is domain 'faces' but the bank is domain 'products'"
        in report.failed[0]["error"]
    )

"""Evaluation in a domain: the products domain's models, renderer, prompts and judge, end to end
on a tiny built products world; `--domain all` and a domain that is not built."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lorasynth.errors import LorasynthError
from lorasynth.evaluate.run import (
    DEFAULT_PROMPTS,
    EvalConfig,
    EvalModels,
    evaluate,
    evaluate_domains,
    missing_models,
)
from lorasynth.world.products import ProductNuisance, product_caption
from tests.conftest import assert_one_line_error, run_cli

TINY = dict(references=2, gallery=4, image_steps=2, timing_repeats=2, ablations=False)


def test_prompts_are_the_domains_caption_words():
    assert EvalConfig().prompts == DEFAULT_PROMPTS and EvalConfig().domain == "faces"
    products = EvalConfig(domain="products").prompts
    assert products[0] == "a photo of sks product"
    assert products[1] == "a photo of sks product, blue background"
    nuisance = ProductNuisance(roll_deg=-18.0, table=True, background="red")
    assert products[2] == product_caption(nuisance, "a photo of sks product")
    assert EvalConfig(domain="products", prompts=("x",)).prompts == ("x",)
    with pytest.raises(LorasynthError, match="unknown domain 'cats'"):
        EvalConfig(domain="cats")


def test_every_domain_into_its_folder_and_one_report(tiny_products_world, tmp_path):
    out = tmp_path / "eval"
    config = EvalConfig(identities=5, methods=("base", "nearest", "diffusion", "trained"), **TINY)
    outcome = evaluate_domains(out, config, progress=False)

    # Faces are not built in this world: said, with the stage to build, not fatal.
    assert "world build --domain faces --stage embedders" in outcome["faces"]
    saved = json.loads((out / "products" / "results.json").read_text())
    # all the held-out products there are (5 asked for): 3 in build/, of which 2 ship
    assert saved["n_identities"] == 3
    cfg = saved["config"]
    assert cfg["domain"] == "products" and cfg["prompts"][0] == "a photo of sks product"
    assert cfg["embedder_condition"].startswith("mini-style/")
    assert cfg["embedder_eval"].startswith("mini-style-eval/")
    methods = saved["methods"]
    # One shipped prior (the default) and the three ablation priors that the build stage made.
    ablations = {"diffusion-raw", "diffusion-latent2", "diffusion-bank2", "diffusion-x0"}
    assert set(methods) == {"base", "nearest", "diffusion", "trained"} | ablations
    curves = saved["ablations"]
    assert list(curves["bank_size"]) == ["2", "4"]  # 4: the default prior, on the full bank
    assert curves["bank_size"]["4"]["method"] == "diffusion"
    assert curves["bank_size"]["2"]["id_sim_mean"] == methods["diffusion-bank2"]["id_sim_mean"]
    assert list(curves["latent_size"]) == ["2", "4"] and list(curves["representation"]) == [
        "raw",
        "vae",
    ]
    assert list(curves["target"]) == ["v", "x0"]  # v: the default prior's own target
    assert curves["target"]["x0"]["method"] == "diffusion-x0"
    assert "not_built" not in curves
    assert methods["diffusion-latent2"]["latent_bytes"] == 8  # its own 2-wide VAE
    assert "absent" not in methods["diffusion"] and methods["diffusion"]["latent_bytes"] == 16
    assert methods["base"]["normalised_fidelity"] == 0.0
    assert methods["trained"]["normalised_fidelity"] == 1.0
    assert 0 <= methods["nearest"]["prompt_fidelity"] <= 1
    assert methods["nearest"]["attr_error"] == methods["nearest"]["attr_error"]  # regressor ran
    # Cached images of prior methods are named by their prior's weights hash, the others not:
    # a new or retrained prior never invalidates (or reuses) another method's images.
    cached = {p.name for p in (out / "products" / "cache").glob("*/photos1-*.npz")}
    diffusion = {n for n in cached if n.startswith("photos1-diffusion")}
    assert len(diffusion) == 5 and all("@" in n for n in diffusion)
    assert len({n.split("@")[1] for n in diffusion}) == 5  # five priors, five hashes
    assert {"photos1-base.npz", "photos1-trained.npz"} <= cached
    # nearest draws on the full train bank (4 rows, in build/): its images are keyed by it
    assert any(n.startswith("photos1-nearest@bank4-") for n in cached)

    domain_report = (out / "products" / "report.md").read_text()
    assert domain_report.startswith("# lorasynth evaluation (mini-world, products)")
    assert (out / "products" / "plots" / "grid.png").is_file()
    grid_columns = (out / "products" / "plots" / "grid.txt").read_text()
    assert grid_columns == "columns: reference | base | nearest | diffusion | trained\n"
    assert (out / "products" / "plots" / "ablations.png").is_file()
    assert "## Bank size" in domain_report and "| 2 | diffusion-bank2 |" in domain_report
    assert "## Prediction target" in domain_report and "| x0 | diffusion-x0 |" in domain_report
    report = (out / "report.md").read_text()
    faces, products = report.split("## faces")[1].split("## products")
    assert "Not evaluated: the faces models are not built" in faces
    assert "`lorasynth world build --domain faces --stage embedders`" in faces
    assert "| nearest |" in products and "(products/report.md)" in products
    assert "products/plots/grid.png" in products


def test_models_of_another_domain_or_absent_are_refused(tiny_products_world, tmp_path):
    assert missing_models("products") is None
    with pytest.raises(LorasynthError, match="--domain faces --stage embedders"):
        EvalModels.shipped("faces")
    models = EvalModels.shipped("products")
    assert models.domain.name == "products"
    assert models.eval_embedder.embedder_id.startswith("mini-style-eval/")
    with pytest.raises(LorasynthError, match="is domain 'products' but the evaluation is domain"):
        evaluate(tmp_path / "x", EvalConfig(identities=2, **TINY), models, progress=False)
    with pytest.raises(
        LorasynthError, match=r"3 held-out products subjects, 4 asked for.*--stage heldout"
    ):
        evaluate(tmp_path / "x", EvalConfig(identities=4, domain="products", **TINY), models, False)


def test_cli_names_the_stage_to_build(tiny_products_world, tmp_path):
    proc = run_cli("evaluate", "--domain", "faces", "--out", tmp_path / "o", "--identities", "2")
    assert_one_line_error(proc, "faces models are not built", "--stage embedders")


def test_cli_domain_all_and_default_identities(tiny_products_world, tmp_path):
    import typer
    from typer.testing import CliRunner

    from lorasynth.cli.evaluate import register

    app = typer.Typer()
    app.callback()(lambda: None)  # keeps `evaluate` a sub-command, as in the real app
    register(app)
    out = tmp_path / "all"
    args = ["evaluate", "--out", str(out), "--domain", "all", "--identities", "2"]
    args += ["--methods", "base,nearest", "--no-ablations"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "faces: not evaluated: the faces models are not built" in result.stderr
    assert "products: 2 identities in" in result.stderr
    assert f"every domain's table: {out / 'report.md'}" in result.stderr
    saved = json.loads((out / "products" / "results.json").read_text())
    assert list(saved["methods"]) == ["base", "nearest"] and saved["config"]["domain"] == "products"

    # One domain, no --identities: all its held-out subjects when it has fewer than 200.
    one = tmp_path / "one"
    args = ["evaluate", "--out", str(one), "--domain", "products", "--methods", "base"]
    result = CliRunner().invoke(app, [*args, "--no-ablations"])
    assert result.exit_code == 0, result.output
    assert "evaluated 3 products identities" in result.stderr
    assert json.loads((one / "results.json").read_text())["n_identities"] == 3


def test_ablation_priors_are_compared_on_one_photo_only(tiny_products_world, tmp_path):
    tiny = {**TINY, "ablations": True}
    config = EvalConfig(
        identities=2, methods=("base", "diffusion", "trained"), multi_photos=2, **tiny
    )
    saved = evaluate(tmp_path / "eval", replace(config, domain="products"), progress=False)
    assert "diffusion-raw" in saved["methods"]
    assert set(saved["ablations"]["photos_2"]) == {"base", "trained", "diffusion"}
    assert set(saved["ablations"]["prior_guidance"]) == {"1.0", "2.0", "4.0"}

"""The evaluation runs end to end on tiny models and writes the contract's files."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import torch

from lorasynth.bank import NORMALISER_FILE, Bank, Normaliser
from lorasynth.bank.conditions import CONDITIONS_FILE, ConditionTable
from lorasynth.evaluate.run import EvalConfig, EvalModels, ablation_curves, evaluate
from lorasynth.faces.mini import EmbedderConfig, MiniEmbedder, save_embedder
from lorasynth.lora import LoraLayout
from lorasynth.synthesis import Synthesizer
from lorasynth.world.bank_build import BankBuildConfig
from lorasynth.world.identities import bank_id, identity_seeds
from lorasynth.world.lora_trainer import LoraTrainConfig

KEYS = {
    "id_sim_mean",
    "id_sim_ci95",
    "normalised_fidelity",
    "top1",
    "attr_error",
    "prompt_fidelity",
    "frechet",
    "time_to_lora_ms",
    "bytes_per_subject",
}


def _bank(path, layout, seeds, embedder=None, scale=0.05):
    gen = torch.Generator().manual_seed(len(seeds))
    ids = [bank_id(s) for s in seeds]
    vectors = scale * torch.randn(len(ids), layout.size, generator=gen)
    bank = Bank.create(path, layout)
    bank.append(ids, vectors)
    Normaliser.fit([vectors], layout.hash).save(bank.path / NORMALISER_FILE)
    if embedder is not None:
        emb = torch.nn.functional.normalize(
            torch.randn(len(ids), 2, embedder.config.embed_dim, generator=gen), dim=-1
        )
        ConditionTable(ids, emb, embedder.embedder_id).save(bank.path / CONDITIONS_FILE)
    return Bank(path)


def test_evaluate_writes_results_report_and_plots(tiny_pipeline, tmp_path, monkeypatch):
    torch.manual_seed(0)
    layout = LoraLayout.from_unet(tiny_pipeline.unet, "w2w", 1)
    cond_embedder = MiniEmbedder(EmbedderConfig("tiny-cond", "plain", (8, 8), (1, 1), 16)).eval()
    save_embedder(cond_embedder, tmp_path / "c.safetensors")
    eval_embedder = MiniEmbedder(EmbedderConfig("tiny-eval", "resnet", (8, 8), (1, 1), 16)).eval()
    save_embedder(eval_embedder, tmp_path / "e.safetensors")
    bank = _bank(tmp_path / "bank", layout, identity_seeds("train", 12), cond_embedder)
    heldout = _bank(tmp_path / "heldout", layout, identity_seeds("heldout", 4))
    models = EvalModels(
        pipe=tiny_pipeline,
        synth=Synthesizer(bank, cond_embedder),
        eval_embedder=eval_embedder,
        heldout=heldout,
        trainer_config=BankBuildConfig(
            lora=LoraTrainConfig(preset="w2w", rank=1, steps=2, samples_per_subject=1)
        ),
    )
    config = EvalConfig(
        identities=3,
        references=2,
        gallery=4,
        image_steps=2,
        timing_repeats=2,
        multi_photos=2,
        prompts=("a photo of sks person", "a photo of sks person, blue background"),
    )
    results = evaluate(tmp_path / "out", config, models, progress=False)

    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["n_identities"] == 3
    assert saved["config"]["domain"] == "faces"  # the default domain, recorded
    for name in ("base", "nearest", "lincomb", "trained"):
        assert saved["methods"][name].keys() >= KEYS, name
    assert saved["methods"]["diffusion"] == {"absent": True}  # no prior given: said, not trained
    assert saved["methods"]["base"]["normalised_fidelity"] == 0.0
    assert saved["methods"]["trained"]["normalised_fidelity"] == 1.0
    assert (
        "photos_2" in saved["ablations"]
        and saved["ablations"]["shuffled_identity"]["id_sim_mean"] <= 1
    )
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| nearest |" in report and "plots/grid.png" in report
    assert (tmp_path / "out" / "plots" / "fidelity-vs-time.png").is_file()
    # A rerun reuses the cached images (making no LoRA at all) and gives the same numbers.
    from lorasynth.evaluate.run import Evaluation

    made_before = Evaluation.loras

    def no_loras(self, *args, **kwargs):
        # Only methods that are absent (nothing cached, nothing to make) may get here.
        assert made_before(self, *args, **kwargs) is None, "cached LoRAs were made again"

    monkeypatch.setattr(Evaluation, "loras", no_loras)
    again = evaluate(tmp_path / "out", config, models, progress=False)
    monkeypatch.undo()
    assert (
        again["methods"]["nearest"]["id_sim_mean"] == results["methods"]["nearest"]["id_sim_mean"]
    )
    # The 4-photo setting may repeat only some methods; the images stay those of the same key.
    fewer = evaluate(
        tmp_path / "out", replace(config, multi_photo_methods=("nearest",)), models, progress=False
    )
    assert set(fewer["ablations"]["photos_2"]) == {"base", "trained", "nearest"}
    # Other images (another seed here; or prompts, sampling settings, priors) never reuse them.
    evaluate(tmp_path / "out", replace(config, seed=1, multi_photos=0), models, progress=False)
    assert len(list((tmp_path / "out" / "cache").iterdir())) == 2


def test_optimize_images_are_keyed_by_what_optimize_uses():
    """optimize fits the representation's coefficients: another denoiser with the same basis and
    statistics makes the same images (one cache); another basis or statistics, new ones."""
    from types import SimpleNamespace

    from lorasynth.evaluate.run import Evaluation
    from lorasynth.models.representation import Representation

    def prior(name, std=1.0):
        return SimpleNamespace(
            name=f"prior:{name}",
            representation=Representation(4),
            latent_mean=torch.zeros(4),
            latent_std=torch.full((4,), std),
            anchor=None,
        )

    def tags(p):
        ev = Evaluation.__new__(Evaluation)
        ev.m = SimpleNamespace(synth=SimpleNamespace(prior=p), variants={})
        return ev.prior_tag("optimize"), ev.prior_tag("diffusion")

    (opt_a, diff_a), (opt_b, diff_b) = tags(prior("aaaa")), tags(prior("bbbb"))
    assert opt_a == opt_b and diff_a == "aaaa" and diff_b == "bbbb"
    assert tags(prior("aaaa", std=2.0))[0] != opt_a


def test_baseline_images_are_keyed_by_the_bank(tmp_path):
    """nearest/lincomb/ridge draw on the bank's rows: a grown bank (500 -> 1,500 faces
    subjects) gets fresh baseline images, never the smaller bank's; base and trained don't."""
    from types import SimpleNamespace

    from lorasynth.evaluate.run import BANK_METHODS, Evaluation
    from lorasynth.lincomb import LincombConfig

    layout = LoraLayout.from_shapes({"attn1.to_q": (4, 6, 1)})

    def tags(bank):
        ev = Evaluation.__new__(Evaluation)
        synth = SimpleNamespace(bank=bank, normaliser=Normaliser.load(bank.path / NORMALISER_FILE))
        anchored = SimpleNamespace(name="prior:cccc", anchor=LincombConfig())
        ev.m = SimpleNamespace(synth=synth, variants={"diffusion-anchored": anchored})
        return {
            m: ev.prior_tag(m) for m in (*BANK_METHODS, "base", "trained", "diffusion-anchored")
        }

    seeds = identity_seeds("train", 6)
    small = tags(_bank(tmp_path / "small", layout, seeds[:4]))
    grown = tags(_bank(tmp_path / "grown", layout, seeds))
    assert small["base"] == small["trained"] == "" == grown["base"]
    assert small["nearest"] == small["lincomb"] == small["ridge"]
    assert small["kernel"].startswith(small["nearest"] + "-")  # and the kernel's settings
    assert small["nearest"].startswith("bank4-") and grown["nearest"].startswith("bank6-")
    assert small["nearest"] != grown["nearest"]
    # a prior anchored on lincomb draws on the bank too
    assert small["diffusion-anchored"] == "cccc@" + small["nearest"]
    assert grown["diffusion-anchored"] == "cccc@" + grown["nearest"]
    assert tags(Bank(tmp_path / "small")) == small  # the same bank, the same images


def test_bank_size_curve_places_the_default_at_the_subjects_it_learned_from():
    """A prior trained before the bank grew sits at its own subject count, not the bank's."""

    def models(subjects):
        prior = SimpleNamespace(
            representation=SimpleNamespace(dim=4, kind="ridge", linear=True),
            model=SimpleNamespace(config=SimpleNamespace(target="v")),
            anchor=None,
            subjects=subjects,
        )
        return SimpleNamespace(
            synth=SimpleNamespace(prior=prior, bank=range(3000)),
            ablation_groups={"diffusion-bank500": ("bank_size", "500")},
            domain=SimpleNamespace(name="faces"),
            stale_ablations={},
        )

    rows = {m: {"id_sim_mean": 0.5} for m in ("diffusion", "diffusion-bank500")}
    assert list(ablation_curves(rows, models(1500))["bank_size"]) == ["500", "1500"]
    # files from before the count was recorded: the bank's size, as before
    assert list(ablation_curves(rows, models(None))["bank_size"]) == ["500", "3000"]

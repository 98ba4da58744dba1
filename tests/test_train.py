from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lorasynth.bank import NORMALISER_FILE, Bank, Normaliser
from lorasynth.bank.conditions import ConditionTable
from lorasynth.errors import LorasynthError
from lorasynth.lora import LoraLayout
from lorasynth.lora.safetensors_io import load_tensors, save_tensors
from lorasynth.models.representation import PcaRepresentation, RidgeRepresentation
from lorasynth.models.store import load_prior, load_vae, save_half_model_copy
from lorasynth.train import PriorTrainConfig, VAETrainConfig, train_prior, train_vae

LAYOUT = LoraLayout.from_shapes(
    {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (20, 12, 3)}
)


def make_synthetic_bank(folder, rows=96, photos=3, emb=8, seed=0):
    """Vectors that are a fixed function of the subject's embedding, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    identity = torch.nn.functional.normalize(torch.randn(rows, emb, generator=gen), dim=-1)
    mix = torch.randn(emb, LAYOUT.size, generator=gen)
    vectors = torch.tanh(identity @ mix) + 0.01 * torch.randn(rows, LAYOUT.size, generator=gen)
    bank = Bank.create(folder / "bank", LAYOUT)
    ids = [f"s{i:03d}" for i in range(rows)]
    bank.append(ids, vectors, shard_rows=40)
    Normaliser.fit([vectors], LAYOUT.hash).save(bank.path / NORMALISER_FILE)
    noisy = identity[:, None] + 0.05 * torch.randn(rows, photos, emb, generator=gen)
    table = ConditionTable(
        list(reversed(ids)), torch.nn.functional.normalize(noisy, dim=-1).flip(0), "test-embedder"
    )
    table.save(folder / "conditions.safetensors")
    return bank.path, folder / "conditions.safetensors"


VAE_CFG = VAETrainConfig(
    latent_dim=8, hidden=64, depth=1, steps=60, batch_size=32, lr=3e-3, checkpoint_every=20
)
PRIOR_CFG = PriorTrainConfig(
    width=64,
    depth=2,
    adalora_rank=4,
    cond_embed_dim=32,
    steps=60,
    batch_size=32,
    lr=3e-3,
    checkpoint_every=20,
    ema=0.9,
)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_vae_then_prior_train_and_record_provenance(tmp_path):
    bank, cond = make_synthetic_bank(tmp_path)
    vae_path = train_vae(bank, tmp_path / "vae", VAE_CFG, progress=False)
    losses = _losses(tmp_path / "vae")
    assert sum(losses[-10:]) < sum(losses[:10])
    vae, prov, _ = load_vae(vae_path)
    assert prov.layout_hash == LAYOUT.hash and vae.config.latent_dim == 8

    prior_path = train_prior(
        bank, cond, tmp_path / "prior", PRIOR_CFG, vae_path=vae_path, progress=False
    )
    _, prov, extra, _ = load_prior(prior_path)
    assert prov.embedder_id == "test-embedder" and prov.representation.startswith("vae:")
    assert extra["latent_std"].shape == (8,)
    assert json.loads((tmp_path / "prior" / "config.json").read_text())["config"]["target"] == "v"

    # The shipped copies store float16 weights: same hash (same trained model), float32 models.
    from lorasynth.lora.safetensors_io import save_half_copy

    half = tmp_path / "vae-half.safetensors"
    save_half_copy(vae_path, half, keys=lambda key: key.startswith("model."))
    half_vae, half_prov, digest = load_vae(half)
    assert half.stat().st_size < 0.6 * vae_path.stat().st_size
    assert digest == load_vae(vae_path)[2] and half_prov == load_vae(vae_path)[1]
    assert all(p.dtype == torch.float32 for p in half_vae.parameters())
    x = torch.randn(4, LAYOUT.size)
    with torch.no_grad():
        full_out, half_out = vae.encode(x)[0], half_vae.encode(x)[0]
    assert torch.allclose(full_out, half_out, atol=1e-2) and not torch.equal(full_out, half_out)


@pytest.mark.parametrize("representation", ["pca", "ridge", "raw"])
def test_prior_over_pca_ridge_or_raw(tmp_path, representation):
    bank, cond = make_synthetic_bank(tmp_path)
    cfg = replace(PRIOR_CFG, representation=representation, pca_dim=6, steps=10)
    _, prov, extra, _ = load_prior(train_prior(bank, cond, tmp_path / "p", cfg, progress=False))
    assert prov.representation.split(":")[0] == representation
    # A ridge basis is stored (and decoded) like a PCA basis.
    assert ("pca_components" in extra) == (representation != "raw")
    if representation != "raw":  # the shipped float16 copy keeps the basis exactly (id holds)
        half = tmp_path / "half.safetensors"
        save_half_model_copy(tmp_path / "p" / "prior.safetensors", half)
        _, _, half_extra, _ = load_prior(half)
        kind = PcaRepresentation if representation == "pca" else RidgeRepresentation
        basis = kind(half_extra["pca_mean"], half_extra["pca_components"])
        assert basis.id == prov.representation
        assert half.stat().st_size < (tmp_path / "p" / "prior.safetensors").stat().st_size


def test_resume_gives_the_same_run(tmp_path):
    bank, cond = make_synthetic_bank(tmp_path)
    cfg = replace(PRIOR_CFG, representation="raw", steps=40)
    straight = train_prior(bank, cond, tmp_path / "a", cfg, progress=False)
    assert train_prior(bank, cond, tmp_path / "b", cfg, progress=False, stop_at=20) is None
    assert not (tmp_path / "b" / "prior.safetensors").exists()
    resumed = train_prior(bank, cond, tmp_path / "b", cfg, progress=False)
    a, _, _, _ = load_prior(straight)
    b, _, _, _ = load_prior(resumed)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    assert _losses(tmp_path / "b") == pytest.approx(_losses(tmp_path / "a"), rel=1e-5)
    with pytest.raises(LorasynthError, match="another config"):
        train_prior(bank, cond, tmp_path / "b", replace(cfg, lr=1.0), progress=False)
    # Another shape too: refused by config, before any weights are restored.
    with pytest.raises(LorasynthError, match="another config"):
        train_prior(bank, cond, tmp_path / "b", replace(cfg, width=32), progress=False)

    # A checkpoint from before a config field existed resumes when the field is at its default.
    from lorasynth.lora.safetensors_io import load_tensors, save_tensors

    state = tmp_path / "b" / "state.safetensors"
    tensors, meta = load_tensors(state)
    old = json.loads(meta["config"])
    del old["subjects"]
    save_tensors(state, tensors, {**meta, "config": json.dumps(old)})
    assert train_prior(bank, cond, tmp_path / "b", cfg, progress=False) is not None
    with pytest.raises(LorasynthError, match="another config"):
        train_prior(bank, cond, tmp_path / "b", replace(cfg, subjects=3), progress=False)


def test_resume_on_a_grown_bank_is_refused(tmp_path):
    """A finished run on 96 rows must not pass for one on 128 (the faces bank grew 500 ->
    1,500 with the run folder unchanged): the checkpoint records what it trained on."""
    small, cond = make_synthetic_bank(tmp_path / "small", rows=96)
    grown, grown_cond = make_synthetic_bank(tmp_path / "grown", rows=128)
    cfg = replace(PRIOR_CFG, representation="raw", steps=20)
    train_prior(small, cond, tmp_path / "run", cfg, progress=False)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["data"]["bank_rows"] == 96
    with pytest.raises(LorasynthError, match=r"other data .*bank_rows 96.*bank_rows 128"):
        train_prior(grown, grown_cond, tmp_path / "run", cfg, progress=False)
    # resume=False starts over on the new data
    assert train_prior(grown, grown_cond, tmp_path / "run", cfg, resume=False, progress=False)


def test_mismatched_vae_is_refused(tmp_path):
    bank, cond = make_synthetic_bank(tmp_path)
    vae_path = train_vae(bank, tmp_path / "vae", replace(VAE_CFG, steps=2), progress=False)
    other, _ = make_synthetic_bank(tmp_path / "other", seed=1)
    with pytest.raises(LorasynthError, match="normaliser"):
        train_prior(other, cond, tmp_path / "p", PRIOR_CFG, vae_path=vae_path, progress=False)


def test_two_processes_follow_the_one_process_loss_curve(tmp_path):
    bank, cond = make_synthetic_bank(tmp_path)
    script = "\n".join(
        [
            "import sys",
            "sys.path.insert(0, '.')",
            "from dataclasses import replace",
            "from pathlib import Path",
            "from lorasynth.train import train_prior",
            "from tests.test_train import PRIOR_CFG",
            "cfg = replace(PRIOR_CFG, representation='raw', steps=15, ema=0.9)",
            "train_prior(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), cfg, progress=False)",
        ]
    )
    (tmp_path / "run.py").write_text(script)
    for n, out in ((1, "one"), (2, "two")):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--cpu",
                "--num_processes",
                str(n),
                "--num_machines",
                "1",
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
                str(tmp_path / "run.py"),
                str(bank),
                str(cond),
                str(tmp_path / out),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-3, abs=1e-5)


def test_prior_on_the_first_subjects_only(tmp_path, monkeypatch):
    """The bank-size ablation: `subjects` limits which bank rows the prior ever sees."""
    bank, cond = make_synthetic_bank(tmp_path)
    seen: list[int] = []
    original = Bank.gather

    def gather(self, rows):
        seen.extend(rows)
        return original(self, rows)

    monkeypatch.setattr(Bank, "gather", gather)
    config = replace(PRIOR_CFG, steps=5, subjects=7, representation="raw")
    first = train_prior(bank, cond, tmp_path / "p", config, progress=False)
    assert seen and max(seen) < 7 and len(set(seen)) > 1
    seen.clear()
    whole = train_prior(bank, cond, tmp_path / "all", replace(config, subjects=0), progress=False)
    assert max(seen) >= 7  # 0: the whole bank (96 rows)
    # the file says how many subjects it learned from (evaluate's bank-size curve reads it)
    assert load_prior(first)[1].subjects == "7" and load_prior(whole)[1].subjects == "96"
    tensors, meta = load_tensors(first)
    save_tensors(first, tensors, {**meta, "lorasynth.subjects": "seven"})
    with pytest.raises(LorasynthError, match="subjects 'seven' is not a count"):
        load_prior(first)


def test_linear_skip_prior_models_the_residual_and_adds_the_map_back(tmp_path):
    import dataclasses

    from lorasynth.models.representation import LinearSkip
    from lorasynth.synthesis import Prior

    bank, cond = make_synthetic_bank(tmp_path)
    cfg = replace(PRIOR_CFG, representation="pca", pca_dim=6, steps=10, linear_skip=True)
    path = train_prior(bank, cond, tmp_path / "p", cfg, progress=False)
    _, _, extra, _ = load_prior(path)
    skip = LinearSkip.from_tensors(extra)
    assert skip is not None and skip.weights.shape == (8, 6)
    # The bank's vectors are a smooth function of the embedding: the map explains most of it.
    store, table = Bank(bank), ConditionTable.load(cond)
    norm = Normaliser.load(store.path / NORMALISER_FILE)
    basis = PcaRepresentation(extra["pca_mean"], extra["pca_components"])
    latents = basis.encode(norm.encode(store.vectors()))
    predicted = skip(table.mean_embeddings()[table.index_for(store.ids)])
    explained = 1 - ((latents - predicted) ** 2).sum() / ((latents - latents.mean(0)) ** 2).sum()
    assert explained > 0.8, explained
    # Residual statistics: smaller than the latents' own spread.
    assert (extra["latent_std"] < latents.std(0)).all()

    prior = Prior.load(path, store, norm, table.embedder_id, None)
    assert prior.skip is not None
    c = table.embeddings[:3, 0]
    with_skip = prior.sample_normalised(c, 4, 1.0, seed=0)
    without = dataclasses.replace(prior, skip=None).sample_normalised(c, 4, 1.0, seed=0)
    torch.testing.assert_close(with_skip - without, skip(c) @ basis.components)


def test_mixup_trains_on_mixes_of_two_subjects(tmp_path, monkeypatch):
    """mixup: some rows are convex mixes of two subjects' vectors; 0 leaves runs unchanged."""
    import lorasynth.train as train_module

    bank, cond = make_synthetic_bank(tmp_path)
    weights: list[torch.Tensor] = []
    original = train_module._mix

    def spy(batch, *rest):
        mixed = original(batch, *rest)
        z, (mixed_z, mixed_cond) = batch[0], mixed
        weights.append((mixed_z - z).abs().sum(1) > 0)
        assert torch.allclose(mixed_cond.norm(dim=-1), torch.ones(len(z)))
        return mixed

    monkeypatch.setattr(train_module, "_mix", spy)
    config = replace(PRIOR_CFG, steps=4, representation="raw", checkpoint_every=100)
    train_prior(bank, cond, tmp_path / "plain", config, progress=False)
    assert not weights  # mixup 0: never called, so earlier runs replay exactly
    train_prior(bank, cond, tmp_path / "mix", replace(config, mixup=0.5), progress=False)
    share = torch.stack(weights).float().mean()
    assert 0.3 < share < 0.7, share
    assert _losses(tmp_path / "mix") != _losses(tmp_path / "plain")


def test_anchored_prior_models_the_residual_around_leave_one_out_lincomb(tmp_path):
    from lorasynth.lincomb import ANCHOR_KEY, LincombConfig
    from lorasynth.synthesis import Prior

    bank, cond = make_synthetic_bank(tmp_path)
    cfg = replace(PRIOR_CFG, representation="pca", pca_dim=6, steps=10, anchor="lincomb", mixup=0.5)
    path = train_prior(bank, cond, tmp_path / "p", cfg, progress=False)
    _, _, extra, _ = load_prior(path)
    assert LincombConfig.from_tensor(extra[ANCHOR_KEY]) == LincombConfig()
    store, table = Bank(bank), ConditionTable.load(cond)
    norm = Normaliser.load(store.path / NORMALISER_FILE)
    basis = PcaRepresentation(extra["pca_mean"], extra["pca_components"])
    latents = basis.encode(norm.encode(store.vectors()))
    # The neighbours explain much of a smooth bank: residuals spread less than latents.
    assert (extra["latent_std"] < latents.std(0)).all()
    assert extra["anchor_scale"].shape == (6,) and (extra["anchor_scale"] > 0).all()

    prior = Prior.load(path, store, norm, table.embedder_id, None)
    assert prior.anchor == LincombConfig()
    c = table.embeddings[:3, 0]
    with pytest.raises(LorasynthError, match="give its anchor"):
        prior.sample_normalised(c, 4, 1.0, seed=0)


def test_an_anchor_needs_a_linear_representation(tmp_path):
    bank, cond = make_synthetic_bank(tmp_path)
    vae = train_vae(bank, tmp_path / "vae", replace(VAE_CFG, steps=2), progress=False)
    cfg = replace(PRIOR_CFG, steps=2, anchor="lincomb")
    with pytest.raises(LorasynthError, match="needs a linear representation"):
        train_prior(bank, cond, tmp_path / "p", cfg, vae_path=vae, progress=False)
    with pytest.raises(LorasynthError, match="unknown anchor"):
        train_prior(
            bank,
            cond,
            tmp_path / "q",
            replace(cfg, anchor="knn", representation="raw"),
            progress=False,
        )


def test_a_run_folder_in_use_is_refused_not_raced(tmp_path):
    import fcntl

    bank, cond = make_synthetic_bank(tmp_path)
    cfg = replace(PRIOR_CFG, representation="raw", steps=10)
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a") as held:  # another trainer holds the run
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LorasynthError, match="another process is training"):
            train_prior(bank, cond, out, cfg, progress=False)
        with pytest.raises(LorasynthError, match="another process is training"):
            train_vae(bank, out, replace(VAE_CFG, steps=5), progress=False)
        assert not (out / "log.jsonl").exists()  # refused before it wrote anything
        fcntl.flock(held, fcntl.LOCK_UN)
    assert train_prior(bank, cond, out, cfg, progress=False) is not None  # released: it runs

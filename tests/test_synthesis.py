from __future__ import annotations

import pytest
import torch

from lorasynth.bank import Bank
from lorasynth.bank.conditions import CONDITIONS_FILE
from lorasynth.errors import LorasynthError
from lorasynth.faces.mini import EmbedderConfig, MiniEmbedder, save_embedder
from lorasynth.lora import LoraLayout, read_lora
from lorasynth.synthesis import Synthesizer
from lorasynth.train import PriorTrainConfig, VAETrainConfig, train_prior, train_vae
from tests.service.tiny import LAYOUT_SHAPES, build_bank

LAYOUT = LoraLayout.from_shapes(LAYOUT_SHAPES)
ROWS, PHOTOS = 40, 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A bank whose vectors are a function of its subjects' (random-embedder) face embeddings."""
    root = tmp_path_factory.mktemp("synth")
    embedder, photos, vectors, bank = build_bank(root, ROWS, PHOTOS)
    vae = train_vae(
        bank.path,
        root / "vae",
        VAETrainConfig(latent_dim=6, hidden=32, depth=1, steps=30, batch_size=16),
        progress=False,
    )
    prior = train_prior(
        bank.path,
        bank.path / CONDITIONS_FILE,
        root / "prior",
        PriorTrainConfig(
            width=32, depth=1, adalora_rank=2, cond_embed_dim=16, steps=30, batch_size=16
        ),
        vae_path=vae,
        progress=False,
    )
    synth = Synthesizer(Bank(bank.path), embedder)
    from lorasynth.synthesis import Prior

    synth.prior = Prior.load(prior, synth.bank, synth.normaliser, embedder.embedder_id, vae)
    return synth, photos, vectors, root


def test_nearest_returns_the_bank_lora_of_the_closest_subject(world):
    synth, photos, vectors, _ = world
    result = synth.synthesize([photos[7, 0], photos[7, 1]], method="nearest")
    cond = synth.embed([photos[7, 0], photos[7, 1]])
    closest = int((synth.bank_embeddings @ cond).argmax())
    v = torch.cat(
        [torch.cat([m.down.flatten(), m.up.flatten()]) for m in result.lora.modules.values()]
    )
    torch.testing.assert_close(v, vectors[closest])


def test_every_method_writes_a_loadable_file(world, tmp_path):
    synth, photos, _, _ = world
    for method in ("diffusion", "nearest", "lincomb", "ridge", "kernel"):
        out = tmp_path / f"{method}.safetensors"
        result = synth.synthesize([photos[3, 0]], method=method, seed=1, out=out, fmt="kohya")
        lora = read_lora(out, layout=LAYOUT)
        assert lora.metadata["lorasynth.method"] == method
        assert result.time_ms > 0 and result.layout_hash == LAYOUT.hash
        assert "photo" not in " ".join(lora.metadata) and "embedding" not in " ".join(lora.metadata)


def test_diffusion_is_seeded(world):
    synth, photos, _, _ = world
    cond = synth.embed([photos[2, 0]])[None]
    a = synth.vectors_for(cond, "diffusion", seed=5)
    assert torch.equal(a, synth.vectors_for(cond, "diffusion", seed=5))
    assert not torch.equal(a, synth.vectors_for(cond, "diffusion", seed=6))
    # temperature 0: the sampler starts from zero noise, so the seed no longer matters
    cold = synth.vectors_for(cond, "diffusion", seed=5, temperature=0.0)
    torch.testing.assert_close(cold, synth.vectors_for(cond, "diffusion", seed=6, temperature=0.0))
    assert not torch.allclose(cold, a)


def test_temperature_is_recorded_in_the_lora(world, tmp_path):
    synth, photos, _, _ = world
    result = synth.synthesize([photos[2, 0]], out=tmp_path / "t.safetensors", temperature=0.5)
    assert read_lora(result.path).metadata["lorasynth.temperature"] == "0.5"
    plain = synth.synthesize([photos[2, 0]], out=tmp_path / "p.safetensors")
    assert "lorasynth.temperature" not in read_lora(plain.path).metadata


def test_a_temperature_for_a_method_without_noise_is_refused(world, tmp_path):
    synth, photos, _, _ = world
    with pytest.raises(LorasynthError, match="only method 'diffusion'"):
        synth.synthesize([photos[2, 0]], "lincomb", out=tmp_path / "l.safetensors", temperature=0.5)
    assert not (tmp_path / "l.safetensors").exists()
    synth.synthesize([photos[2, 0]], "lincomb", temperature=1.0)  # the default is no request


def test_lincomb_points_toward_the_subject(world):
    synth, photos, vectors, _ = world
    cond = synth.embed(list(photos[11]))[None]
    v = synth.vectors_for(cond, "lincomb")[0]
    mean = vectors.mean(0)
    toward = torch.nn.functional.cosine_similarity(v - mean, vectors[11] - mean, dim=0)
    assert toward > 0.5, toward


def test_errors(world, tmp_path):
    synth, _, _, _ = world
    with pytest.raises(LorasynthError, match="unknown method"):
        synth.vectors_for(torch.zeros(1, 16), "magic")
    with pytest.raises(LorasynthError, match="no such photo"):
        synth.synthesize([tmp_path / "missing.png"])
    with pytest.raises(LorasynthError, match="not a readable image"):
        synth.synthesize([b"not an image"])
    other = MiniEmbedder(EmbedderConfig("tiny2", "plain", (8, 8), (1, 1), 16))
    save_embedder(other, tmp_path / "other.safetensors")
    with pytest.raises(LorasynthError, match="embeddings come from"):
        Synthesizer(synth.bank, other)


def test_synthesize_cli_json_and_train_cli(world, tmp_path):
    import json

    from PIL import Image

    from tests.conftest import assert_one_line_error, run_cli

    synth, photos, _, root = world
    photo = tmp_path / "me.png"
    Image.fromarray(photos[4, 0]).save(photo)
    out = tmp_path / "me.safetensors"
    proc = run_cli(
        "synthesize",
        photo,
        "--out",
        out,
        "--bank",
        synth.bank.path,
        "--prior",
        root / "prior" / "prior.safetensors",
        "--vae",
        root / "vae" / "lora-vae.safetensors",
        "--embedder",
        root / "embedder.safetensors",
        "--json",
        "--seed",
        "3",
        "--temperature",
        "0.25",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (
        report["method"] == "diffusion"
        and report["seed"] == 3
        and report["layout_hash"] == LAYOUT.hash
    )
    assert 0 < report["time_ms"] < 10_000
    assert read_lora(out).metadata["lorasynth.seed"] == "3"
    assert read_lora(out).metadata["lorasynth.temperature"] == "0.25"
    assert_one_line_error(
        run_cli(
            "synthesize",
            tmp_path / "nope.png",
            "--out",
            out,
            "--bank",
            synth.bank.path,
            "--embedder",
            root / "embedder.safetensors",
            "--method",
            "nearest",
        ),
        "no such photo",
    )
    proc = run_cli(
        "train",
        "vae",
        synth.bank.path,
        "--out",
        tmp_path / "v",
        "--set",
        "steps=3",
        "--set",
        "hidden=16",
        "--set",
        "latent_dim=4",
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "v" / "lora-vae.safetensors").is_file()


def test_python_api_mirrors_the_cli(world, tmp_path):
    import lorasynth

    synth, photos, _, _ = world
    result = lorasynth.synthesize(
        [photos[1, 0]], out=tmp_path / "a.safetensors", method="lincomb", synthesizer=synth
    )
    assert result.path.is_file() and result.method == "lincomb"


def test_lincomb_keeps_the_neighbours_distance_from_the_mean(world):
    # A plain combination of many LoRAs shrinks towards the mean and loses identity.
    synth, photos, _, _ = world
    cond = synth.embed(list(photos[11]))[None]
    v = synth.vectors_for(cond, "lincomb")[0]
    mean = synth.normaliser.mean
    top = (synth.bank_embeddings @ cond[0]).topk(min(synth.lincomb_k, len(synth.bank))).indices
    norms = (synth.vectors[top] - mean).norm(dim=1)
    assert norms.min() - 1e-4 <= (v - mean).norm() <= norms.max() + 1e-4


@pytest.mark.parametrize(
    "method, strength", [("ridge", "RIDGE_STRENGTH"), ("kernel", "KERNEL_STRENGTH")]
)
def test_a_bank_regression_points_toward_the_subject_at_its_strength(world, method, strength):
    import lorasynth.synthesis

    synth, photos, vectors, _ = world
    cond = synth.embed(list(photos[11]))[None]
    v = synth.vectors_for(cond, method)[0]
    mean = synth.normaliser.mean
    toward = torch.nn.functional.cosine_similarity(v - mean, vectors[11] - mean, dim=0)
    assert toward > 0.5, toward
    rms = synth.normaliser.std.double().norm()
    expected = getattr(lorasynth.synthesis, strength) * rms
    torch.testing.assert_close((v - mean).norm().double(), expected, rtol=1e-4, atol=0)


def test_a_prior_files_strength_sets_its_loras_deviation(world, tmp_path):
    from lorasynth.models.store import save_half_model_copy
    from lorasynth.synthesis import STRENGTH_KEY, Prior

    synth, photos, _, root = world
    shipped = tmp_path / "prior.safetensors"
    save_half_model_copy(root / "prior" / "prior.safetensors", shipped, {STRENGTH_KEY: "0.5"})
    vae = root / "vae" / "lora-vae.safetensors"
    prior = Prior.load(shipped, synth.bank, synth.normaliser, synth.embedder.embedder_id, vae)
    assert prior.strength == 0.5 and synth.prior.strength is None
    cond = synth.embed([photos[2, 0]])[None]
    saved, synth.prior = synth.prior, prior
    try:
        v = synth.vectors_for(cond, "diffusion", seed=3)[0]
    finally:
        synth.prior = saved
    rms = synth.normaliser.std.double().norm()
    deviation = (v - synth.normaliser.mean).norm().double()
    torch.testing.assert_close(deviation, 0.5 * rms, rtol=1e-4, atol=0)


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_a_malformed_strength_is_a_one_line_error(world, tmp_path, value):
    from lorasynth.models.store import save_half_model_copy
    from lorasynth.synthesis import STRENGTH_KEY, Prior

    synth, _, _, root = world
    shipped = tmp_path / "prior.safetensors"
    save_half_model_copy(root / "prior" / "prior.safetensors", shipped, {STRENGTH_KEY: value})
    vae = root / "vae" / "lora-vae.safetensors"
    with pytest.raises(LorasynthError, match="malformed header: strength"):
        Prior.load(shipped, synth.bank, synth.normaliser, synth.embedder.embedder_id, vae)


def test_an_anchored_prior_adds_its_sample_to_lincombs_lora(world, tmp_path):
    from dataclasses import replace

    from lorasynth.synthesis import Prior

    synth, photos, _, _ = world
    path = train_prior(
        synth.bank.path,
        synth.bank.path / CONDITIONS_FILE,
        tmp_path / "anchored",
        PriorTrainConfig(
            representation="pca",
            pca_dim=5,
            anchor="lincomb",
            width=32,
            depth=1,
            adalora_rank=2,
            cond_embed_dim=16,
            steps=10,
            batch_size=16,
        ),
        progress=False,
    )
    prior = Prior.load(path, synth.bank, synth.normaliser, synth.embedder.embedder_id, None)
    cond = torch.stack([synth.embed([photos[i, 0]]) for i in (2, 9)])
    sampled = synth.sample_prior(prior, cond, steps=4, guidance=1.0, seed=0)
    anchor = synth.normaliser.encode(synth.lincomb_vectors(cond, prior.anchor))
    residual = sampled - anchor  # what the prior adds lies in its basis' span
    basis = prior.representation
    # ... and there, the result is the anchor's coefficients, scaled, plus the sample
    unscaled = replace(prior, anchor_scale=None).sample_normalised(cond, 4, 1.0, 0, 1.0, anchor)
    torch.testing.assert_close(
        basis.encode(sampled) - basis.encode(unscaled),
        (prior.anchor_scale - 1) * basis.encode(anchor),
        atol=1e-3,
        rtol=1e-3,
    )
    torch.testing.assert_close(
        residual, (residual @ basis.components.T) @ basis.components, atol=1e-3, rtol=1e-3
    )
    assert residual.norm() > 0
    saved = synth.prior
    try:
        synth.prior = prior
        result = synth.synthesize([photos[2, 0]], out=tmp_path / "a.safetensors")
    finally:
        synth.prior = saved
    assert read_lora(result.path).layout().hash == LAYOUT.hash


@pytest.mark.parametrize("neighbours", [None, 4])
def test_a_bank_too_big_for_memory_gives_the_same_loras_from_its_shards(
    world, monkeypatch, neighbours
):
    """Over IN_MEMORY_BANK_BYTES the bank baselines read rows from the memory-mapped shards
    (only the rows they use, or one pass), never the whole bank at once; same vectors."""
    import lorasynth.synthesis as synthesis
    from lorasynth.kernel import KernelConfig

    synth, photos, _, _ = world
    if neighbours is not None:  # a bank past whole_bank_max: kernel weighs nearest subjects
        config = KernelConfig(whole_bank_max=8, neighbours=neighbours)
        monkeypatch.setattr(synthesis, "KernelConfig", lambda: config)
    cond = torch.stack([synth.embed([photos[i, 0]]) for i in (3, 17)])
    loaded = Synthesizer(Bank(synth.bank.path), synth.embedder)
    monkeypatch.setattr(synthesis, "IN_MEMORY_BANK_BYTES", 0)
    streamed = Synthesizer(Bank(synth.bank.path), synth.embedder)
    monkeypatch.setattr(synthesis, "STREAM_ROWS", 7)  # several passes' worth of batches
    for method in ("nearest", "lincomb", "kernel"):
        expected = loaded.vectors_for(cond, method)
        torch.testing.assert_close(streamed.vectors_for(cond, method), expected)
    assert loaded.bank_in_memory and not streamed.bank_in_memory
    assert streamed._vectors is None and loaded._vectors is not None

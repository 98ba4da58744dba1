"""Embedder training: the ArcFace loss, a few real steps, resuming, and the metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lorasynth.errors import LorasynthError
from lorasynth.faces.mini import (
    PRESETS,
    EmbedderConfig,
    load_embedder,
    load_regressor,
)
from lorasynth.world import train_embedders as te
from lorasynth.world.train_embedders import (
    ArcFaceLoss,
    TrainConfig,
    TrainingFaces,
    lr_at,
    margin_at,
    rank1_identification,
    train_embedder,
    verification_metrics,
)

TINY = EmbedderConfig("tiny", "resnet", (8, 16), (1, 1), 16)
TINY_TRAIN = TrainConfig(
    steps=40, batch_size=16, num_identities=4, lr=1e-2, warmup_steps=2, margin=0.2, scale=16.0
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def clusters(ids: int, per_id: int, dim: int, noise: float, seed: int = 0):
    """Unit embeddings around one random centre per identity, and their labels."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(ids, dim, generator=gen), dim=1)
    labels = torch.arange(ids).repeat_interleave(per_id)
    emb = centres[labels] + noise * torch.randn(len(labels), dim, generator=gen)
    return F.normalize(emb, dim=1), labels


def test_margin_lowers_only_the_target_logit():
    torch.manual_seed(0)
    loss = ArcFaceLoss(8, 5, scale=30.0, margin=0.4)
    emb = F.normalize(torch.randn(6, 8), dim=1)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    plain, margin = loss.logits(emb, labels, margin=0.0), loss.logits(emb, labels)
    target = F.one_hot(labels, 5).bool()
    assert bool((margin[target] < plain[target]).all())
    torch.testing.assert_close(margin[~target], plain[~target])
    # Without the margin it is softmax cross-entropy on s * cos.
    cos = emb @ F.normalize(loss.weight, dim=1).T
    torch.testing.assert_close(plain, 30.0 * cos)
    assert loss(emb, labels) > loss(emb, labels, margin=0.0)
    # Where theta + m <= pi the target logit is exactly s * cos(theta + m).
    theta = torch.acos(cos[target].clamp(-1, 1))
    ok = theta + 0.4 <= math.pi
    torch.testing.assert_close(margin[target][ok], 30.0 * torch.cos(theta + 0.4)[ok])


def test_target_logit_falls_monotonically_with_the_angle():
    loss = ArcFaceLoss(2, 2, scale=1.0, margin=0.5)
    loss.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    angles = torch.linspace(0, math.pi, 200)
    emb = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    target = loss.logits(emb, torch.zeros(200, dtype=torch.long))[:, 0]
    assert bool((target[1:] < target[:-1]).all()) and bool(target.isfinite().all())


def test_gradient_flows_to_embeddings_and_class_centres():
    torch.manual_seed(0)
    loss = ArcFaceLoss(8, 5)
    emb = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    loss(emb, torch.tensor([0, 1, 2, 3])).backward()
    assert emb.grad.abs().sum() > 0 and loss.weight.grad.abs().sum() > 0
    assert loss.weight.grad[4].abs().sum() > 0  # non-target classes are pushed away too


def test_schedules():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, margin=0.4, margin_warmup=0.5)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) < 0.01
    assert margin_at(0, cfg) == 0.0 and margin_at(25, cfg) == pytest.approx(0.2)
    assert margin_at(50, cfg) == margin_at(99, cfg) == 0.4


def test_training_batches_are_a_function_of_seed_and_step():
    faces = TrainingFaces(num_identities=5, seed=3, size=32, max_shift=2)
    x, y = faces.batch(7, 6)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert y.shape == (6,) and int(y.max()) < 5
    x2, y2 = faces.batch(7, 6)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(faces.batch(8, 6)[0], x)


def test_a_tiny_embedder_learns(tmp_path):
    model, log = train_embedder(TINY, TINY_TRAIN, progress=False, log_every=1)
    losses = [loss for _, loss in log["losses"]]
    assert log["steps"] == 40 and len(losses) == 40
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert not model.training


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    cfg = TrainConfig(**{**TINY_TRAIN.__dict__, "steps": 6})
    state = tmp_path / "state.safetensors"
    straight, _ = train_embedder(TINY, cfg, progress=False)
    _, log = train_embedder(TINY, cfg, state, progress=False, until=3)
    assert log["steps"] == 3 and state.is_file()
    resumed, log = train_embedder(TINY, cfg, state, progress=False)
    assert log["steps"] == 6
    expected = straight.state_dict()
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)
    other = TrainConfig(**{**cfg.__dict__, "lr": 0.5})
    with pytest.raises(LorasynthError, match="different configuration"):
        train_embedder(TINY, other, state, progress=False)
    train_embedder(TINY, other, state, resume=False, progress=False, until=1)  # starts over


def test_verification_of_perfectly_separated_embeddings():
    emb, labels = clusters(ids=50, per_id=3, dim=64, noise=0.0)
    m = verification_metrics(emb, labels)
    assert m["tar_at_far"] == 1.0 and m["eer"] == 0.0
    assert m["genuine_pairs"] == 50 * 3 and m["impostor_pairs"] == 150 * 149 // 2 - 150
    assert rank1_identification(emb, labels, gallery_size=10) == 1.0


def test_verification_of_random_embeddings_is_chance():
    gen = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(2000, 16, generator=gen), dim=1)
    labels = torch.arange(500).repeat_interleave(4)  # 3000 genuine, ~2M impostor pairs
    m = verification_metrics(emb, labels, far=1e-2)
    assert abs(m["tar_at_far"] - 1e-2) < 6e-3 and abs(m["eer"] - 0.5) < 0.03
    assert abs(rank1_identification(emb, labels, gallery_size=100) - 0.01) < 0.01


def test_verification_threshold_matches_the_definition():
    emb, labels = clusters(ids=200, per_id=4, dim=16, noise=0.6, seed=1)
    m = verification_metrics(emb, labels, far=1e-3)
    scores = (emb @ emb.T).numpy()
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(scores, dtype=bool), k=1)
    impostor, genuine = scores[upper & ~same.numpy()], scores[upper & same.numpy()]
    t = m["threshold"]  # (float32 sums differ from the matrix product by ~1e-7)
    assert (impostor > t + 1e-6).mean() <= 1e-3 < (impostor >= t - 1e-6).mean()
    assert m["tar_at_far"] == pytest.approx((genuine > m["threshold"]).mean())
    assert 0 < m["tar_at_far"] < 1 and 0 < m["eer"] < 0.5
    # EER: at its threshold the two error rates meet (within one genuine pair's step).
    t = np.sort(genuine)[round(m["eer"] * len(genuine))]
    assert abs((impostor >= t).mean() - (genuine < t).mean()) < 0.02


def test_noisier_embeddings_score_worse():
    results = [verification_metrics(*clusters(100, 4, 16, noise)) for noise in (0.3, 0.6, 1.0)]
    tars = [r["tar_at_far"] for r in results]
    eers = [r["eer"] for r in results]
    assert tars[0] > tars[1] > tars[2] and eers[0] < eers[1] < eers[2]


def test_build_embedder_writes_weights_report_and_regressor(tmp_path, monkeypatch):
    monkeypatch.setitem(
        PRESETS, "mini-eval", EmbedderConfig("mini-eval", "plain", (8, 16), (1, 1), 16)
    )
    monkeypatch.setitem(te.TRAINING, "mini-eval", TINY_TRAIN)
    out = tmp_path / "out"
    metrics = te.build_embedder(
        "mini-eval",
        out,
        steps=5,
        progress=False,
        state_dir=tmp_path / "state",
        eval_identities=100,
        regressor_identities=60,
    )
    for key in ("tar_at_far", "eer", "rank1", "attribute_mae", "attribute_baseline_mae"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["impostor_pairs"] >= 70_000
    model = load_embedder(out / "mini-eval.safetensors")
    regressor = load_regressor(out / "attribute-regressor.safetensors")
    assert regressor.config.embedder_id == model.embedder_id
    record = json.loads((out / "mini-eval.json").read_text())
    assert record["embedder_id"] == model.embedder_id and record["steps"] == 5
    assert record["train"]["steps"] == 5 and record["metrics"]["rank1"] == metrics["rank1"]
    per = record["attribute_regressor"]["per_attribute"]
    assert len(per) == 22 and 0.15 < record["attribute_regressor"]["baseline_mae"] < 0.35
    assert set(record["attribute_regressor"]["informative"]) <= set(per)
    assert (tmp_path / "state" / "state.safetensors").is_file()
    with pytest.raises(LorasynthError, match="unknown embedder"):
        te.build_embedder("mini-nope", out)

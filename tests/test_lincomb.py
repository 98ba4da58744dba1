from __future__ import annotations

import torch

from lorasynth.lincomb import LincombConfig, lincomb_vectors


def _bank(rows=30, emb=6, dim=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.nn.functional.normalize(torch.randn(rows, emb, generator=gen), dim=-1)
    vectors = torch.randn(rows, dim, generator=gen)
    return embeddings, vectors, vectors.mean(0)


def test_chunks_give_each_condition_what_it_gets_alone():
    embeddings, vectors, mean = _bank()
    cond = embeddings[:20] + 0.1
    config = LincombConfig(k=8)
    together = lincomb_vectors(cond, embeddings, lambda r: vectors[r], mean, config)
    alone = torch.cat(
        [lincomb_vectors(c[None], embeddings, lambda r: vectors[r], mean, config) for c in cond]
    )
    torch.testing.assert_close(together, alone)


def test_exclude_makes_each_combination_from_the_other_subjects():
    """A subject's own row never enters its combination, which is then what a bank without it
    gives (up to the bank's embedding centre, which moves by one row)."""
    embeddings, vectors, mean = _bank()
    config = LincombConfig(k=8)
    for subject in (3, 11):
        used: list[int] = []

        def rows(r, used=used):
            used.extend(r.tolist())
            return vectors[r]

        cond = embeddings[subject : subject + 1]
        excluded = lincomb_vectors(cond, embeddings, rows, mean, config, torch.tensor([subject]))
        assert subject not in used and len(used) == 8
        keep = torch.tensor([j for j in range(len(embeddings)) if j != subject])
        without = lincomb_vectors(
            cond, embeddings[keep], lambda r, keep=keep: vectors[keep][r], mean, config
        )
        torch.testing.assert_close(excluded, without, atol=0.05, rtol=0.05)
        included = lincomb_vectors(cond, embeddings, lambda r: vectors[r], mean, config)
        assert (included - excluded).norm() > 0.1
    # -1 excludes nothing.
    cond = embeddings[[5]]
    torch.testing.assert_close(
        lincomb_vectors(cond, embeddings, lambda r: vectors[r], mean, config, torch.tensor([-1])),
        lincomb_vectors(cond, embeddings, lambda r: vectors[r], mean, config),
    )

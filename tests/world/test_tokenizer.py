"""The mini-world CLIP tokenizer: CLIP's vocabulary cut to K merges, deterministic."""

from __future__ import annotations

import itertools

import pytest
from transformers import CLIPTokenizer

from lorasynth.errors import LorasynthError
from lorasynth.world.attributes import BACKGROUNDS, Nuisance, caption
from lorasynth.world.tokenizer import BOS, DEFAULT_MAX_LENGTH, EOS, build_tokenizer, clip_vocab


def all_captions() -> list[str]:
    """Every caption the renderer can produce (each captioned nuisance on and off)."""
    return [
        caption(Nuisance(smile=s, eye_openness=e, yaw=y, background=b, glasses=g, hat=h))
        for s, e, y, b, g, h in itertools.product(
            (0.0, 0.9), (1.0, 0.1), (0.0, 0.8, -0.8), BACKGROUNDS, (False, True), (False, True)
        )
    ]


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return build_tokenizer()


def test_vocabulary_is_clips_own_prefix():
    vocab, merges = clip_vocab(100)
    assert len(vocab) == 256 + 256 + 100 + 2
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # CLIP's byte order, then "</w>" forms
    assert merges[0] == ("i", "n") and vocab["in"] == 512  # CLIP's first merge
    assert vocab[BOS] == 612 and vocab[EOS] == 613


def test_special_tokens_and_size(tok):
    assert len(tok) == 512 + 4000 + 2
    assert tok.bos_token_id == len(tok) - 2 and tok.eos_token_id == len(tok) - 1
    assert tok.pad_token_id == tok.eos_token_id  # SD pads with <|endoftext|>
    assert tok.model_max_length == DEFAULT_MAX_LENGTH


def test_deterministic():
    a, b = build_tokenizer(500), build_tokenizer(500)
    assert a.get_vocab() == b.get_vocab()
    text = "a photo of a person, smiling, teal background"
    assert a(text).input_ids == b(text).input_ids


def test_captions_become_sensible_subwords(tok):
    tokens = tok.convert_ids_to_tokens(tok("a photo of a person, blue background").input_ids)
    assert tokens == [
        BOS, "a</w>", "photo</w>", "of</w>", "a</w>", "person</w>", ",</w>",
        "blue</w>", "back", "ground</w>", EOS,
    ]  # fmt: skip


def test_every_caption_fits_and_round_trips(tok):
    for text in all_captions():
        ids = tok(text).input_ids
        assert len(ids) <= tok.model_max_length, text
        assert tok.unk_token_id not in ids[1:-1]
        assert tok.decode(ids, skip_special_tokens=True).replace(" ,", ",") == text


def test_save_and_load(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    text = "a photo of sks person, wearing glasses and a hat"
    assert loaded(text).input_ids == tok(text).input_ids
    assert loaded.model_max_length == tok.model_max_length


def test_merge_count_is_checked():
    with pytest.raises(LorasynthError, match="num_merges"):
        build_tokenizer(-1)

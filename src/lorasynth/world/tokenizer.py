"""The mini-world's CLIP BPE tokenizer: OpenAI CLIP's own vocabulary, cut to its first K merges.

CLIP builds its vocabulary as: the 256 byte characters, the same with "</w>" (end of word),
one token per merge in merge order, then <|startoftext|> and <|endoftext|>. Keeping only the
first K merges keeps exactly the most frequent sub-words, so the text encoder's embedding table
stays small while every string still tokenizes (rare words fall back to shorter pieces).
The merge file ships with open-clip-torch (bpe_simple_vocab_16e6.txt.gz); it is read by path,
never by importing open_clip.
"""

from __future__ import annotations

import gzip
import importlib.metadata
from functools import cache
from pathlib import Path

from transformers import CLIPTokenizer

from lorasynth.errors import LorasynthError

BPE_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"
FULL_MERGES = 49152 - 256 - 2  # the merges OpenAI CLIP uses (its vocabulary has 49,408 tokens)
DEFAULT_MERGES = 4000
DEFAULT_MAX_LENGTH = 32  # every mini-world caption fits (the longest is 30 tokens)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bpe_path() -> Path:
    """Where open-clip-torch installed CLIP's merge file."""
    try:
        dist = importlib.metadata.distribution("open-clip-torch")
    except importlib.metadata.PackageNotFoundError:
        raise LorasynthError(
            "the CLIP BPE vocabulary comes from open-clip-torch, which is not installed; "
            "run `pip install --no-deps open-clip-torch==3.3.0`"
        ) from None
    path = Path(str(dist.locate_file(BPE_FILE)))
    if not path.is_file():
        raise LorasynthError(f"{path}: CLIP BPE vocabulary missing; reinstall open-clip-torch")
    return path


@cache
def _all_merges() -> tuple[tuple[str, str], ...]:
    lines = gzip.decompress(bpe_path().read_bytes()).decode("utf-8").split("\n")
    # Line 0 is a version header; CLIP then uses the next FULL_MERGES lines.
    return tuple(tuple(line.split()) for line in lines[1 : FULL_MERGES + 1])  # type: ignore[misc]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (same order as CLIP's)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clip_vocab(num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges truncated to the first `num_merges` merges."""
    if not 0 <= num_merges <= FULL_MERGES:
        raise LorasynthError(f"num_merges must be in [0, {FULL_MERGES}], got {num_merges}")
    merges = list(_all_merges()[:num_merges])
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise LorasynthError("CLIP BPE file yields a duplicate token; is the file corrupt?")
    return vocab, merges


def build_tokenizer(
    num_merges: int = DEFAULT_MERGES, model_max_length: int = DEFAULT_MAX_LENGTH
) -> CLIPTokenizer:
    """A real CLIPTokenizer (vocabulary 512 + num_merges + 2); the same arguments, the same ids."""
    vocab, merges = clip_vocab(num_merges)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)

"""Which integer seeds play which role in the mini-world; fixed for the whole project.

Bank identities (train and held-out) never appear in the data the pipeline or the embedders are
trained on, so held-out scores measure generalisation to unseen people, as with real faces.
"""

from __future__ import annotations

from lorasynth.errors import LorasynthError

BANK_TRAIN_START = 0  # bank LoRAs the synthesis models learn from
BANK_HELDOUT_START = 100_000  # held-out identities: evaluation only, with trained upper-bound LoRAs
MODEL_TRAINING_START = 1_000_000  # identities the pipeline and the embedders are trained on
_SPLITS = {"train": BANK_TRAIN_START, "heldout": BANK_HELDOUT_START}
_SPLIT_LIMIT = 100_000
# Validation identities: held-out seeds [100, 200) choose settings such as a prior's strength
# (world.calibrate). The held-out split steps over them (its seeds are [0, 100) then [200, ...)),
# so however many held-out identities are evaluated, none was used to tune anything.
VALIDATION_START = BANK_HELDOUT_START + 100
VALIDATION_SIZE = 100


def identity_seeds(split: str, count: int) -> list[int]:
    """The first `count` identity seeds of a bank split ("train" or "heldout")."""
    if split not in _SPLITS:
        raise LorasynthError(f"unknown split {split!r}; choose train or heldout")
    if not 0 <= count <= _SPLIT_LIMIT:
        raise LorasynthError(f"count must be in [0, {_SPLIT_LIMIT}], got {count}")
    start = _SPLITS[split]
    if split == "train":
        return list(range(start, start + count))
    before = min(count, VALIDATION_START - start)
    after = VALIDATION_START + VALIDATION_SIZE
    return list(range(start, start + before)) + list(range(after, after + count - before))


def validation_seeds(count: int) -> list[int]:
    """The first `count` validation identities (disjoint from both bank splits)."""
    if not 0 <= count <= VALIDATION_SIZE:
        raise LorasynthError(f"count must be in [0, {VALIDATION_SIZE}], got {count}")
    return list(range(VALIDATION_START, VALIDATION_START + count))


# Nuisance streams of bank identities: which photos play which role (never mixed up).
LORA_TRAINING_PHOTOS = 0  # the renders each identity's trained LoRA is fitted on
CONDITION_PHOTOS = 1  # photos whose embeddings condition the prior during training
EVAL_CONDITION_PHOTOS = 2  # the photo a held-out identity's LoRA is synthesized from
EVAL_REFERENCE_PHOTOS = 3  # references that generated images are compared with


def bank_id(seed: int) -> str:
    """Row id of an identity in the mini-world banks (the LoRA file's stem)."""
    return f"id-{seed:07d}"

"""Machinery every mini-world domain shares: checked numbers, seeded streams, attribute vectors
and nuisance records. The domains (`attributes.py` for faces, `products.py`) only say which
fields they have, their ranges and how to sample them.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, ClassVar, Self

import numpy as np

from lorasynth.errors import LorasynthError

# Named so captions can say "blue background" and an evaluator can check it by colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (50, 160, 60),
    "blue": (40, 80, 210),
    "yellow": (235, 210, 50),
    "purple": (130, 60, 170),
    "orange": (240, 140, 30),
    "gray": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "teal": (30, 150, 150),
}

# Ranges of the nuisances every domain's photos have (pose, placement, light), in field order.
PHOTO_RANGES: dict[str, tuple[float, float]] = {
    "roll_deg": (-30.0, 30.0),
    "offset_x": (-0.25, 0.25),
    "offset_y": (-0.25, 0.25),
    "scale": (0.5, 1.5),
    "light_angle_deg": (0.0, 360.0),
    "light_strength": (0.0, 1.0),
    "brightness": (0.5, 1.5),
}


def as_int(value: Any, what: str) -> int:
    """Any integer-like value (Python or numpy int, not bool or float) as a Python int."""
    if isinstance(value, bool):
        raise LorasynthError(f"{what} must be an integer, got the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise LorasynthError(f"{what} must be an integer, got {value!r}") from None


def checked_number(value: Any, what: str, low: float, high: float) -> float:
    """A real number in [low, high] (Python or numpy, not bool) as a float."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise LorasynthError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not low <= number <= high:  # also refuses NaN
        raise LorasynthError(f"{what} must be in [{low}, {high}], got {value!r}")
    return number


def seed_words(value: int) -> list[int]:
    # SeedSequence takes only non-negative ints (of any size): encode the sign separately.
    return [1 if value < 0 else 0, abs(value)]


def stream_rng(domain: int, *seeds: tuple[Any, str]) -> np.random.Generator:
    """A generator of stream `domain` seeded by (value, what) pairs, each checked as an int."""
    words = [word for value, what in seeds for word in seed_words(as_int(value, what))]
    return np.random.default_rng(np.random.SeedSequence([domain, *words]))


class AttributeVector:
    """Mixin for a frozen dataclass of float fields, each in [0, 1], in a fixed vector order.

    A subclass sets `_FIELDS` (its field names, in order) after the class and `_KIND` (the word
    its errors use: "identity", "product").
    """

    _FIELDS: ClassVar[tuple[str, ...]]
    _KIND: ClassVar[str]

    def __post_init__(self) -> None:
        for name in self._FIELDS:
            value = checked_number(getattr(self, name), f"{self._KIND} attribute {name}", 0.0, 1.0)
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, float]:
        """Attribute name -> value, in field order."""
        return {name: getattr(self, name) for name in self._FIELDS}

    def as_vector(self) -> np.ndarray:
        """A float64 vector in field order."""
        return np.array([getattr(self, name) for name in self._FIELDS], dtype=np.float64)

    @classmethod
    def from_vector(cls, vector: Any) -> Self:
        """Inverse of `as_vector`."""
        values = np.asarray(vector, dtype=np.float64).reshape(-1)
        if values.shape[0] != len(cls._FIELDS):
            raise LorasynthError(
                f"{cls._KIND} attribute vector must have {len(cls._FIELDS)} values, "
                f"got {values.shape[0]}"
            )
        return cls(*(float(v) for v in values))

    @classmethod
    def from_dict(cls, values: dict[str, float]) -> Self:
        """Inverse of `to_dict`; unknown or missing names are an error."""
        unknown = sorted(set(values) - set(cls._FIELDS))
        missing = [name for name in cls._FIELDS if name not in values]
        if unknown or missing:
            raise LorasynthError(
                f"{cls._KIND} attributes: unknown names {unknown}, missing names {missing}"
            )
        return cls(**{name: float(values[name]) for name in cls._FIELDS})


class NuisanceRecord:
    """Mixin for a frozen dataclass of one photo's nuisances: numbers checked against `_RANGES`,
    `background` one of `BACKGROUNDS`, the `_FLAGS` fields true or false."""

    _RANGES: ClassVar[dict[str, tuple[float, float]]]
    _FLAGS: ClassVar[tuple[str, ...]]

    def __post_init__(self) -> None:
        for name, (low, high) in self._RANGES.items():
            value = checked_number(getattr(self, name), f"nuisance {name}", low, high)
            object.__setattr__(self, name, value)
        background = self.background  # type: ignore[attr-defined]
        if not isinstance(background, str) or background not in BACKGROUNDS:
            raise LorasynthError(
                f"unknown background {background!r}; choose one of {sorted(BACKGROUNDS)}"
            )
        for name in self._FLAGS:
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise LorasynthError(f"nuisance {name} must be true or false, got {value!r}")
            object.__setattr__(self, name, bool(value))

    @classmethod
    def neutral(cls) -> Self:
        """Every field at its default."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value (JSON-ready)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Inverse of `to_dict`; unknown names are an error."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise LorasynthError(f"nuisance: unknown names {unknown}; known are {sorted(known)}")
        return cls(**values)

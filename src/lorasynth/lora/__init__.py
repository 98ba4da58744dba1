"""LoRA files in, canonical vectors out, and back."""

from lorasynth.lora.canonical import canonical_factors, flatten, flatten_batch, unflatten
from lorasynth.lora.formats import (
    FORMATS,
    LoraFile,
    LoraModule,
    check_fits_layout,
    inspect_lora,
    read_lora,
    write_lora,
)
from lorasynth.lora.layout import PRESETS, LayoutRow, LoraLayout

__all__ = [
    "FORMATS",
    "PRESETS",
    "LayoutRow",
    "LoraFile",
    "LoraLayout",
    "LoraModule",
    "canonical_factors",
    "check_fits_layout",
    "flatten",
    "flatten_batch",
    "inspect_lora",
    "read_lora",
    "unflatten",
    "write_lora",
]

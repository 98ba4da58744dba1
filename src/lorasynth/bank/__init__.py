"""The bank of canonical LoRA vectors: sharded store, ingest from LoRA files, normaliser."""

from lorasynth.bank.normaliser import NORMALISER_FILE, Normaliser
from lorasynth.bank.store import Bank, copy_bank

__all__ = ["NORMALISER_FILE", "Bank", "Normaliser", "copy_bank"]

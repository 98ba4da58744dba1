"""lorasynth: zero-shot LoRA synthesis for diffusion models, and the LoRA library around it."""

__version__ = "0.1.0"

"""Synthesis models: the LoRA VAE, the conditional diffusion prior, samplers."""

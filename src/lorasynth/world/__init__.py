"""The mini-world: a synthetic face world with its own small Stable Diffusion, embedders and bank."""

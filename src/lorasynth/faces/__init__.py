"""Faces: photos in, identity embeddings out (the mini-world's own embedders for now)."""

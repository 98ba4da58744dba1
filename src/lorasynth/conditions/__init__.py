"""Condition encoders beyond the mini-world's: photo -> unit vector that conditions the prior."""

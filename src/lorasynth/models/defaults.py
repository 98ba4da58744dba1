"""How a LoRA is drawn from the prior by default (torch-free, so the CLI and service import it).

Measured on the v0 mini-world (50 held-out identities, mini-eval ID similarity, docs/eval-v0):
flat in sampling steps (5: 0.097, 10: 0.101, 25: 0.094, 50: 0.099) and better with guidance
(1: 0.094, 2: 0.126, 4: 0.128), so 10 steps at guidance 2 beat 25 at 1 in fidelity and in time
(20 denoiser passes, batched in pairs, instead of 25).
"""

from lorasynth.errors import LorasynthError

PRIOR_STEPS = 10
PRIOR_GUIDANCE = 2.0

# Classifier-free guidance of the *image* pipeline when LoRAs are judged (evaluate, the bank's
# acceptance): identity fades as it grows while prompts hold (v1 faces, trained LoRAs of 100
# held-out identities, 3 images each: top-1 0.62 at 1.0, 0.61 at 1.5, 0.53 at 3, 0.32 at 6,
# 0.23 at 10; prompt fidelity >= 0.995 at every value).
IMAGE_GUIDANCE = 1.5


def check_temperature(method: str, temperature: float) -> None:
    """Refuse a temperature other than 1 for a method that draws no noise: it would be
    recorded by a caller (the service stores what was asked) yet change nothing."""
    if method != "diffusion" and temperature != 1.0:
        raise LorasynthError(
            f"temperature {temperature:g} changes only method 'diffusion' (the prior's "
            f"starting noise); {method} draws none, leave it at 1"
        )

"""API keys: `lsk_<random>` shown once, stored only as sha256; one role per key.

Roles: admin (tenant administration, export, erasure, audit), creator (subjects, photos,
LoRA requests), reviewer (review queue, revoke), consumer (download approved LoRAs).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from lorasynth.service.models import ROLES

KEY_PREFIX = "lsk_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant_id: str
    role: str

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"


def check_role(role: str) -> str:
    if role not in ROLES:
        from lorasynth.errors import LorasynthError

        raise LorasynthError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return role

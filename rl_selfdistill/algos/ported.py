"""Which SB3 code the self-distilling ``train()`` methods were copied from.

SB3's ``train()`` has no hook between computing the loss and stepping the optimizer, so the
distilling classes carry a copy of it with one added call. When SB3 changes the original,
the copy must be ported again: ``tests/test_sb3_copies.py`` compares the installed source
with these fingerprints and names the SB3 release to port from.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PortedSource:
    """An SB3 function whose body a class copies, and the fingerprint of the copied version."""

    name: str
    sha256: str
    sb3_versions: str

    def installed_sha256(self, function: Callable[..., Any]) -> str:
        return hashlib.sha256(textwrap.dedent(inspect.getsource(function)).encode()).hexdigest()


# Identical in stable-baselines3 2.7.0, 2.7.1, 2.8.0, 2.9.0 and 2.9.2 (checked against each release's wheel).
PPO_TRAIN = PortedSource(
    "stable_baselines3.PPO.train", "961ff1a5752c6032719aa7272c3412cf23f784be6cd33b998451cabb7a4475c3", "2.7.0-2.9.2"
)
DQN_TRAIN = PortedSource(
    "stable_baselines3.DQN.train", "6fa9a537e37a2879c006fa946231e6df1a78a7a7a1c54f36a4da1f173e8ab6a3", "2.7.0-2.9.2"
)
# A2C.train: identical in the same releases, checked the same way.
A2C_TRAIN = PortedSource(
    "stable_baselines3.A2C.train", "8a515e91f6fd614931f862ce21c48c82ccfce120c48e26e37fe05b720202439d", "2.7.0-2.9.2"
)
# SAC.train and TD3.train: identical in the same releases, checked the same way.
SAC_TRAIN = PortedSource(
    "stable_baselines3.SAC.train", "5a13788145b0225737bdd9ca9e64db41b0d210e987af273f2d1a2dc73f2a6707", "2.7.0-2.9.2"
)
TD3_TRAIN = PortedSource(
    "stable_baselines3.TD3.train", "46115b51179e60b75fd96f85f10eac6556534edd08de890221c7e488c8faf367", "2.7.0-2.9.2"
)

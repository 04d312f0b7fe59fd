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
    #: Older releases whose source differs from the copied one, each difference reviewed: (fingerprint, what differs).
    #: The copy runs on them as on the releases it was ported from, but not bit for bit like their own train().
    reviewed_older: tuple[tuple[str, str], ...] = ()

    def accepts(self, installed: str) -> bool:
        return installed == self.sha256 or installed in dict(self.reviewed_older)

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
# sb3-contrib: QRDQN.train is identical in sb3-contrib 2.7.0, 2.7.1, 2.8.0, 2.9.0 and 2.9.2 (each release's wheel).
QRDQN_TRAIN = PortedSource(
    "sb3_contrib.QRDQN.train", "cacae15d35eea1b97f7428877e96fedc5d1b4b69ad1b7bea2c3ef9530b282a34", "2.7.0-2.9.2"
)
# MaskablePPO.train is identical in 2.8.0, 2.9.0 and 2.9.2, the version copied. In 2.7.0 and 2.7.1 it differs in one
# place: it adds n_epochs to _n_updates after the epochs, also when target_kl stopped them early (2.8 counts the
# epochs run). The copy counts as 2.8 does on 2.7 too; the parameters train identically.
MASKABLE_PPO_TRAIN = PortedSource(
    "sb3_contrib.MaskablePPO.train",
    "257061c029a4c355cfaf64f3ddb268b63167b089d4ebdfddee601fdf3cc86e42",
    "2.8.0-2.9.2",
    reviewed_older=(
        (
            "8c1a18c11e10cd0b3f7990ff275e3d0e6032b573351a482e9ffa0a8fd1ffb9de",
            "2.7.x adds n_epochs to _n_updates after the epochs instead of 1 per epoch run (differs only after a "
            "target_kl early stop); the parameters train identically",
        ),
    ),
)

# RecurrentPPO.train and TRPO.train are identical in sb3-contrib 2.8.0, 2.9.0 and 2.9.2, the versions copied (each
# release's wheel). In 2.7.0 and 2.7.1 RecurrentPPO.train adds n_epochs to _n_updates after the epochs, also after a
# target_kl early stop (the parameters train identically); TRPO.train computes the line search's maximal step in
# float32 tensors (th.sqrt) instead of a float64 number (the same algorithm, last-bit differences in the step) and
# zips without strict=True. The copies follow 2.8 on 2.7 too.
RECURRENT_PPO_TRAIN = PortedSource(
    "sb3_contrib.RecurrentPPO.train",
    "4fab73aa4c90cc7930d5acfd94442eca1b6695f229054e3ce8cc3d2835c16c16",
    "2.8.0-2.9.2",
    reviewed_older=(
        (
            "b93338b869af4b01d23e5fda5a1171825ce781ce3a369389a170fc5b582506ef",
            "2.7.x adds n_epochs to _n_updates after the epochs instead of 1 per epoch run; parameters train identically",
        ),
    ),
)
TRPO_TRAIN = PortedSource(
    "sb3_contrib.TRPO.train",
    "7a64927a299685ecfb8457c7e8e308bea46da9ed409a60544c350e1374116afd",
    "2.8.0-2.9.2",
    reviewed_older=(
        (
            "e34c34cdfe7923005bdaf33aa10736c2d075e4f14ca5331635637295cf5657a7",
            "2.7.x computes the line search's maximal step in float32 (th.sqrt) instead of float64: last-bit differences",
        ),
    ),
)

"""The copied SB3 ``train()`` methods still match the SB3 release installed here."""

from __future__ import annotations

import pytest
import stable_baselines3
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3

from rl_selfdistill.algos import ported


@pytest.mark.parametrize(
    "source,function",
    [
        (ported.PPO_TRAIN, PPO.train),
        (ported.DQN_TRAIN, DQN.train),
        (ported.A2C_TRAIN, A2C.train),
        (ported.SAC_TRAIN, SAC.train),
        (ported.TD3_TRAIN, TD3.train),
    ],
)
def test_copied_train_matches_installed_sb3(source, function):
    installed = source.installed_sha256(function)
    assert installed == source.sha256, (
        f"{source.name} in stable-baselines3 {stable_baselines3.__version__} differs from the version the "
        f"self-distilling copy was ported from (SB3 {source.sb3_versions}): port the copy in rl_selfdistill/algos "
        f"from SB3 {stable_baselines3.__version__}, then record the new fingerprint {installed} in algos/ported.py"
    )

"""The copied SB3 and sb3-contrib ``train()`` methods still match the releases installed here."""

from __future__ import annotations

import importlib

import pytest
from sb3_contrib import QRDQN, TRPO, MaskablePPO, RecurrentPPO
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
        (ported.QRDQN_TRAIN, QRDQN.train),
        (ported.MASKABLE_PPO_TRAIN, MaskablePPO.train),
        (ported.RECURRENT_PPO_TRAIN, RecurrentPPO.train),
        (ported.TRPO_TRAIN, TRPO.train),
    ],
)
def test_copied_train_matches_installed_sb3(source, function):
    installed = source.installed_sha256(function)
    package = function.__module__.split(".")[0]  # stable_baselines3 or sb3_contrib
    version = importlib.import_module(package).__version__
    assert source.accepts(installed), (
        f"{source.name} in {package} {version} differs from the version the self-distilling copy was ported from "
        f"({package} {source.sb3_versions}): port the copy in rl_selfdistill/algos from {package} {version}, then "
        f"record the new fingerprint {installed} in algos/ported.py"
    )

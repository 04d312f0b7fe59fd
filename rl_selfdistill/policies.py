"""Features extractors that presets can name (`policy_kwargs: {features_extractor_class: minatar_cnn}`)."""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class MinAtarCNN(BaseFeaturesExtractor):
    """The network of the MinAtar paper (Young & Tian 2019), without its output layer.

    One 3x3 convolution with 16 channels, stride 1, no padding, ReLU; then a 128-unit dense layer, ReLU.
    The policy/value heads (PPO) or the Q output layer (DQN) follow; set `net_arch: []` to add no hidden layer in
    between, as in the paper. Observations are MinAtar's (10, 10, n_channels) grids, channels last (booleans or
    numbers), and are permuted to channels first here.
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 128, n_filters: int = 16) -> None:
        super().__init__(observation_space, features_dim)
        if len(observation_space.shape) != 3:
            raise ValueError(f"MinAtarCNN needs (height, width, channels) observations, got shape {observation_space.shape}")
        height, width, channels = observation_space.shape
        self.conv = nn.Sequential(nn.Conv2d(channels, n_filters, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        n_flat = n_filters * (height - 2) * (width - 2)
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.conv(observations.float().permute(0, 3, 1, 2)))

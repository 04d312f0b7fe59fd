"""The shared machinery of self-distillation, algorithm-agnostic.

- ``config``: ``DistillConfig``, every setting validated in one place (imports no torch);
- ``kl``: KL divergences; ``policy_kl``: KL between two SB3 actor-critic policies;
- ``teacher``: teacher storage and refresh cadence; ``coefficient``: the weight of the term;
- ``distiller``: one algorithm instance's settings and state; ``mixin``: what every
  self-distilling SB3 algorithm shares (keywords -> DistillConfig, teacher saving, logging).

Submodules are imported by name (``from rl_selfdistill.distill.kl import ...``), so that the
config layer can read ``DistillConfig`` without importing torch.
"""

"""Hyperparameter search on Optuna: `rl-selfdistill tune` (docs/tuning.md).

Modules: `space` (search-space files, validated like presets), `seeds` (the tuning seed range that
reporting seeds never enter), `trial` (one trial = ordinary runs reported to the pruner), `study`
(journal storage, resume after a kill, worker processes) and `summary` (best trials, plot,
importances, the command that reproduces the best trial). Optuna is imported only when a study runs.
"""

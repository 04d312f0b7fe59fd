"""Paired throughput: the one A B A B timer, and training speed measured with it.

`alternate` runs the variants round-robin (A B A B ...) in one process, so load from other
processes on a shared machine (which drifts) hits every variant alike; medians over rounds
ignore a stray slow trial, and the per-round ratio B/A cancels load that changes between
rounds. `measure_throughput` uses it to compare two algorithms (or two env backends) with
identical settings; `scripts/env_speed.py` uses it to compare backends and thread counts.

Each model is warmed up first (not timed) so that the measured trials run in steady
state: for a self-distilling model the teacher exists and the KL term is active, for an
off-policy model learning has started.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from rl_selfdistill.algos import registry
from rl_selfdistill.errors import UsageError

DEFAULT_BACKEND = "dummy"

# PPO settings of the speed measurements (scripts/env_speed.py, scripts/gpu_check.sh): the RL Zoo's Atari entry, and
# a MuJoCo entry with a Zoo-sized rollout, so that timings are comparable across the two families.
ATARI_PPO_KWARGS: dict[str, Any] = {
    "n_steps": 128,
    "n_epochs": 4,
    "batch_size": 256,
    "learning_rate": 2.5e-4,
    "clip_range": 0.1,
    "vf_coef": 0.5,
    "ent_coef": 0.01,
}
MUJOCO_PPO_KWARGS: dict[str, Any] = {"n_steps": 512, "batch_size": 64, "n_epochs": 10, "gae_lambda": 0.92, "gamma": 0.98}
Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


def alternate(
    trials: Mapping[Key, Callable[[], Value]], rounds: int, report: Callable[[Key, int, Value], None] | None = None
) -> dict[Key, list[Value]]:
    """Call every trial once per round, in the mapping's order, `rounds` times: A B A B ...

    `report(key, round, value)` sees each value as it arrives (for live progress lines).
    """
    results: dict[Key, list[Value]] = {key: [] for key in trials}
    for round_index in range(rounds):
        for key, trial in trials.items():
            results[key].append(trial())
            if report is not None:
                report(key, round_index, results[key][-1])
    return results


def median_paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of b / a within the same round: robust to load that drifts between rounds."""
    return statistics.median(y / x for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class AlgoSpec:
    """`algo[@backend]`, e.g. `ppo`, `sd_ppo`, `ppo@envpool`."""

    algo: str
    backend: str = DEFAULT_BACKEND

    @classmethod
    def parse(cls, text: str) -> AlgoSpec:
        algo, _, backend = text.partition("@")
        if algo not in registry.names():
            raise UsageError(
                f"unknown algo {algo!r} in {text!r}; write ALGO[@BACKEND] with ALGO in {', '.join(registry.names())}"
            )
        return cls(algo, backend or DEFAULT_BACKEND)

    @property
    def label(self) -> str:
        return f"{self.algo}@{self.backend}"

    @property
    def is_sd(self) -> bool:
        return registry.is_distilling(self.algo)

    @property
    def on_policy(self) -> bool:
        return registry.get(self.algo).training == "on_policy"


@dataclass(frozen=True)
class ThroughputSettings:
    """Hyperparameters shared by A and B. On-policy algorithms use n_steps/n_epochs/batch_size, off-policy ones
    the replay settings."""

    n_envs: int = 8
    timesteps: int = 10_240  # environment steps per timed trial
    warmup_timesteps: int | None = None  # default: enough for the teacher to exist (and DQN to learn)
    device: str = "cpu"
    seed: int = 0
    n_steps: int = 128
    n_epochs: int = 10
    batch_size: int = 256
    train_freq: int = 4
    gradient_steps: int = 1
    learning_starts: int = 1_000
    buffer_size: int = 100_000
    target_update_interval: int = 1_000
    distill_coef: float = 0.5
    teacher_update_interval: int = 2_048
    # Further distillation options of the SD spec (teacher_mode, distill_coef_mode, ...), validated like -params.
    sd_params: dict[str, Any] = field(default_factory=dict)
    # Further settings of both models (policy_kwargs, gamma, ...), checked against each class's schema.
    shared_params: dict[str, Any] = field(default_factory=dict)

    def warmup_for(self, spec: AlgoSpec) -> int:
        if self.warmup_timesteps is not None:
            return self.warmup_timesteps
        # One rollout (PPO) or train step (DQN) past the first teacher refresh, so the KL term is on when timing starts.
        needed = self.teacher_update_interval if spec.is_sd else 0
        if spec.is_sd and self.sd_params.get("teacher_update_unit", "env_steps") != "env_steps":
            # Counted in gradient steps or phases: two update phases fill a lagged teacher of a few steps.
            per_phase = self.n_steps if spec.on_policy else self.train_freq
            needed = self.n_envs * per_phase * (2 if spec.on_policy else self.teacher_update_interval + 2)
        if not spec.on_policy:
            needed = max(needed, self.learning_starts)
        return needed + self.n_envs * (self.n_steps if spec.on_policy else self.train_freq)


@dataclass
class ThroughputResult:
    env_id: str
    a: str
    b: str
    fps_a: list[float]
    fps_b: list[float]
    settings: dict[str, Any]
    # Per trial, the share of wall-clock spent in the update phase (`train()`); the rest is collection.
    update_share_a: list[float] = field(default_factory=list)
    update_share_b: list[float] = field(default_factory=list)
    # Per trial, env steps per second of this process's CPU time: far steadier than wall-clock on a shared machine.
    cpu_fps_a: list[float] = field(default_factory=list)
    cpu_fps_b: list[float] = field(default_factory=list)
    teacher_updates: dict[str, int | None] = field(default_factory=dict)
    torch_threads: int | None = None
    hardware: dict[str, Any] = field(default_factory=dict)

    @property
    def median_a(self) -> float:
        return statistics.median(self.fps_a)

    @property
    def median_b(self) -> float:
        return statistics.median(self.fps_b)

    @property
    def ratio(self) -> float:
        """median fps of B / median fps of A: below 1 means B is slower."""
        return self.median_b / self.median_a

    @property
    def paired_ratio(self) -> float:
        """Median over rounds of B's fps / A's fps in the same round."""
        return median_paired_ratio(self.fps_a, self.fps_b)

    @property
    def cpu_ratio(self) -> float | None:
        """Median over rounds of B's / A's steps per CPU-second (process time), or None when not measured."""
        return median_paired_ratio(self.cpu_fps_a, self.cpu_fps_b) if self.cpu_fps_a else None

    def phase_costs(self, which: str) -> tuple[float, float] | None:
        """Median microseconds per env step spent collecting and updating, for A (`"a"`) or B (`"b"`)."""
        fps, shares = (self.fps_a, self.update_share_a) if which == "a" else (self.fps_b, self.update_share_b)
        if not shares:
            return None
        per_step = [1e6 / value for value in fps]
        collect = statistics.median(us * (1.0 - share) for us, share in zip(per_step, shares))
        update = statistics.median(us * share for us, share in zip(per_step, shares))
        return collect, update

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "median_a": self.median_a,
            "median_b": self.median_b,
            "ratio_b_over_a": self.ratio,
            "median_paired_ratio": self.paired_ratio,
            "median_paired_cpu_ratio": self.cpu_ratio,
            "us_per_step_collect_update_a": self.phase_costs("a"),
            "us_per_step_collect_update_b": self.phase_costs("b"),
        }


def algo_kwargs(spec: AlgoSpec, settings: ThroughputSettings) -> dict[str, Any]:
    """Constructor arguments; A and B get the same ones except the SD-only keys."""
    common: dict[str, Any] = {"seed": settings.seed, "device": settings.device, "verbose": 0}
    if spec.on_policy:
        family = {"n_steps": settings.n_steps, "n_epochs": settings.n_epochs, "batch_size": settings.batch_size}
    else:
        family = {
            "train_freq": settings.train_freq,
            "gradient_steps": settings.gradient_steps,
            "learning_starts": settings.learning_starts,
            "buffer_size": settings.buffer_size,
            "batch_size": settings.batch_size,
        }
    # Only the settings the class takes: A2C has no epochs or minibatches (one step on the whole rollout).
    accepted = inspect.signature(registry.algo_class(spec.algo)).parameters
    if _copies_its_target(accepted):
        family["target_update_interval"] = settings.target_update_interval
    common.update({key: value for key, value in family.items() if key in accepted})
    if settings.shared_params:
        from rl_selfdistill.config import model_kwargs

        common.update(model_kwargs(settings.shared_params))  # registry names (activation_fn: tanh) made objects
    if spec.is_sd:
        common.update(distill_coef=settings.distill_coef, teacher_update_interval=settings.teacher_update_interval)
        common.update(settings.sd_params)
    return common


def _copies_its_target(parameters: Any) -> bool:
    """DQN and QR-DQN copy their target network every `target_update_interval` env steps (tau 1). SAC's keyword of
    the same name counts gradient steps between Polyak updates (tau 0.005): it keeps its own default of 1, or the
    timed SAC would skip nearly all of its target updates."""
    tau = parameters.get("tau")
    return "target_update_interval" in parameters and tau is not None and tau.default == 1.0


def policy_for(env: Any, algo_class: type | None = None) -> str:
    """CnnPolicy for image observations (Atari frames), MlpPolicy otherwise: what SB3 users pick. A class whose
    policies have other names (RecurrentPPO's MlpLstmPolicy) gets its own alias of that kind."""
    from stable_baselines3.common.preprocessing import is_image_space

    kind = "Cnn" if is_image_space(env.observation_space) else "Mlp"
    aliases = getattr(algo_class, "policy_aliases", {})
    return next((name for name in aliases if name.startswith(kind)), f"{kind}Policy")


def build_model(env_id: str, spec: AlgoSpec, settings: ThroughputSettings) -> Any:
    from rl_selfdistill.envs import make_vec_env
    from rl_selfdistill.run.build import check_action_space

    env = make_vec_env(env_id, n_envs=settings.n_envs, backend=spec.backend, seed=settings.seed)
    check_action_space(spec.algo, env)  # one line, not SB3's assertion
    algo_class = registry.algo_class(spec.algo)
    return algo_class(policy_for(env, algo_class), env, **algo_kwargs(spec, settings))


def update_phase_timer() -> Any:
    """An SB3 callback that sums the time from each rollout's end to the next rollout's start.

    SB3's on- and off-policy loops both call ``train()`` exactly there (and after the last
    rollout, before ``on_training_end``), so the sum is the time spent in updates.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class UpdatePhaseTimer(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.update_seconds = 0.0
            self._rollout_ended_at: float | None = None

        def _close_update_phase(self) -> None:
            if self._rollout_ended_at is not None:
                self.update_seconds += time.perf_counter() - self._rollout_ended_at
                self._rollout_ended_at = None

        def _on_rollout_start(self) -> None:
            self._close_update_phase()

        def _on_rollout_end(self) -> None:
            self._rollout_ended_at = time.perf_counter()

        def _on_training_end(self) -> None:
            self._close_update_phase()

        def _on_step(self) -> bool:
            return True

    return UpdatePhaseTimer()


def timed_trial(model: Any, timesteps: int) -> tuple[float, float, float]:
    """Environment steps per second of one `learn` call (steps counted, as PPO rounds up to whole rollouts),
    the share of its wall-clock spent in updates, and steps per second of this process's CPU time."""
    timer = update_phase_timer()
    before = model.num_timesteps
    start, cpu_start = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=timesteps, reset_num_timesteps=False, progress_bar=False, callback=timer)
    elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
    steps = model.num_timesteps - before
    return steps / elapsed, timer.update_seconds / elapsed, steps / max(cpu_elapsed, 1e-9)


def training_fps(
    env_id: str,
    backend: str,
    n_envs: int = 8,
    total_timesteps: int = 4096,
    seed: int = 0,
    ppo_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
    torch_threads: int | None = None,
) -> float:
    """Steps per second of a fresh PPO's `learn(total_timesteps)` (no warm-up); env construction is not timed."""
    import torch

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    with _fresh_ppo(env_id, backend, n_envs, seed, device, ppo_kwargs or {}) as model:
        return timed_trial(model, total_timesteps)[0]


def collection_fps(
    env_id: str,
    backend: str,
    n_envs: int = 8,
    n_steps: int = 128,
    seed: int = 0,
    ppo_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
) -> float:
    """Steps per second of PPO.collect_rollouts with a random-init policy (forward pass and buffer, no updates)."""
    from stable_baselines3.common.callbacks import CallbackList

    with _fresh_ppo(env_id, backend, n_envs, seed, device, {**(ppo_kwargs or {}), "n_steps": n_steps}) as model:
        _, callback = model._setup_learn(n_steps * n_envs, CallbackList([]))
        callback.on_training_start(locals(), globals())
        start = time.perf_counter()
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=n_steps)
        return n_steps * n_envs / (time.perf_counter() - start)


@contextmanager
def _fresh_ppo(env_id: str, backend: str, n_envs: int, seed: int, device: str, kwargs: dict[str, Any]) -> Iterator[Any]:
    """An untrained SB3 PPO on a new VecEnv, closed on exit."""
    from stable_baselines3 import PPO

    from rl_selfdistill.envs import make_vec_env

    venv = make_vec_env(env_id, n_envs, backend, seed)
    try:
        yield PPO(policy_for(venv), venv, seed=seed, device=device, verbose=0, **kwargs)
    finally:
        venv.close()


def teacher_updates(model: Any) -> int | None:
    distiller = getattr(model, "distiller", None)
    return None if distiller is None else int(distiller.teacher.n_updates)


def check_pair(a: AlgoSpec, b: AlgoSpec, pairs: int) -> None:
    bases = (registry.base_name(a.algo), registry.base_name(b.algo))
    if bases[0] != bases[1]:
        # Name only the two families involved: the whole registry is too long for a one-line error.
        families = "; ".join(
            f"{base} family: {', '.join(name for name in registry.names() if registry.base_name(name) == base)}"
            for base in bases
        )
        raise UsageError(f"{a.label} and {b.label} are different algorithm families; pick both from one ({families})")
    if pairs < 1:
        raise UsageError(f"--pairs must be at least 1, got {pairs}")


def measure_throughput(
    env_id: str,
    a: AlgoSpec | str,
    b: AlgoSpec | str,
    pairs: int = 5,
    settings: ThroughputSettings | None = None,
    report: Any = None,
) -> ThroughputResult:
    """Warm up A and B, then time `pairs` A B rounds; `report(label, trial, fps)` sees each trial as it ends."""
    a, b = (spec if isinstance(spec, AlgoSpec) else AlgoSpec.parse(spec) for spec in (a, b))
    settings = settings or ThroughputSettings()
    check_pair(a, b, pairs)
    models = {spec: build_model(env_id, spec, settings) for spec in (a, b)}
    for spec, model in models.items():
        model.learn(total_timesteps=settings.warmup_for(spec), progress_bar=False)
    trials = {spec: (lambda model=model: timed_trial(model, settings.timesteps)) for spec, model in models.items()}
    on_trial = None if report is None else (lambda spec, trial, value: report(spec.label, trial, value[0]))
    timings = alternate(trials, pairs, on_trial)
    fps = {spec: [value[0] for value in values] for spec, values in timings.items()}
    update_shares = {spec: [value[1] for value in values] for spec, values in timings.items()}
    cpu_fps = {spec: [value[2] for value in values] for spec, values in timings.items()}
    updates = {spec.label: teacher_updates(model) for spec, model in models.items()}
    for model in models.values():
        model.get_env().close()
    import torch

    from rl_selfdistill.benchmark.grid import hardware_info

    return ThroughputResult(
        env_id,
        a.label,
        b.label,
        fps[a],
        fps[b],
        asdict(settings),
        update_share_a=update_shares[a],
        update_share_b=update_shares[b],
        cpu_fps_a=cpu_fps[a],
        cpu_fps_b=cpu_fps[b],
        teacher_updates=updates,
        torch_threads=torch.get_num_threads(),
        hardware=hardware_info(),
    )


def format_result(result: ThroughputResult) -> str:
    lines = [
        f"env {result.env_id}: {len(result.fps_a)} pairs of {result.settings['timesteps']} steps",
        f"A {result.a}: median {result.median_a:.0f} fps  (trials: {', '.join(f'{v:.0f}' for v in result.fps_a)})",
        f"B {result.b}: median {result.median_b:.0f} fps  (trials: {', '.join(f'{v:.0f}' for v in result.fps_b)})",
        f"ratio B/A: {result.ratio:.3f} (of the medians); median of the per-round ratios: {result.paired_ratio:.3f}",
    ]
    if result.cpu_ratio is not None:
        lines.append(f"ratio B/A of steps per CPU-second (process time): {result.cpu_ratio:.3f} (median of per-round ratios)")
    for which, label in (("a", result.a), ("b", result.b)):
        costs = result.phase_costs(which)
        if costs is not None:
            lines.append(f"{label}: {costs[0]:.0f} us/step collecting + {costs[1]:.0f} us/step updating (medians)")
    lines += [f"teacher updates of {label}: {n}" for label, n in result.teacher_updates.items() if n is not None]
    return "\n".join(lines)

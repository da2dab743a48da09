"""Evaluation of S members' policies: always eval mode, always the same start states (case 09).

Every member plays the same `episodes` episodes, reset with seeds `seed, seed + 1, ...`, so two
variants (or two runs) are compared on identical start states and the result is deterministic.
BN layers use their running statistics (eval mode) and the modules' modes are restored after.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

__all__ = ["evaluate", "check_obs", "eval_mode", "seeded_envs"]


def seeded_envs(seeds, steps, env_id: str):
    """Validate a training run's `seeds` and `steps`, seed torch with the first seed, and make one
    environment per seed; returns `(seeds as a list of ints, envs)`."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must list at least one seed")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    torch.manual_seed(seeds[0])
    return seeds, [gym.make(env_id) for _ in seeds]


def check_obs(obs, members: int, obs_dim: int, what: str = "obs") -> torch.Tensor:
    """obs of shape (S, obs_dim) or (S, N, obs_dim) as a float32 (S, N, obs_dim) tensor, or a
    ValueError naming `what`."""
    x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
    if x.dim() == 2:
        x = x.unsqueeze(1)
    if x.dim() != 3 or x.shape[0] != members or x.shape[2] != obs_dim:
        raise ValueError(f"{what} must have shape (members={members}, obs_dim={obs_dim}) or "
                         f"(members, N, obs_dim), got {tuple(np.shape(obs))}")
    return x


class eval_mode:
    """Context manager: the given modules in eval mode inside, their own modes restored after."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules

    def __enter__(self):
        self.saved = [[m.training for m in module.modules()] for module in self.modules]
        for module in self.modules:
            module.eval()
        return self

    def __exit__(self, *exc):
        for module, modes in zip(self.modules, self.saved):
            for m, mode in zip(module.modules(), modes):
                m.training = mode
        return False


def evaluate(policy, networks, env_id: str, members: int, episodes: int = 5,
             seed: int = 10_000, max_steps: int | None = None, return_states: bool = False):
    """(S, episodes) undiscounted returns of `policy` with `networks` in eval mode.

    policy(obs) -> actions: obs (S, N, obs_dim) float32 tensor -> (S, N) integer or
    (S, N, action_dim) float actions, N = episodes; networks: the modules to put in eval mode.
    return_states: also return, per member, the (T, obs_dim) array of states its policy visited
    (the on-policy state distribution).
    """
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    envs = [[gym.make(env_id) for _ in range(episodes)] for _ in range(members)]
    obs = np.stack([[env.reset(seed=seed + e)[0] for e, env in enumerate(row)] for row in envs])
    returns = np.zeros((members, episodes))
    alive = np.ones((members, episodes), bool)
    steps, visited = 0, [[] for _ in range(members)]
    with eval_mode(*networks), torch.no_grad():
        while alive.any() and (max_steps is None or steps < max_steps):
            actions = policy(torch.from_numpy(obs.astype(np.float32))).numpy()
            for s in range(members):
                for e in range(episodes):
                    if not alive[s, e]:
                        continue
                    if return_states:
                        visited[s].append(obs[s, e].copy())
                    o, r, term, trunc, _ = envs[s][e].step(actions[s, e])
                    obs[s, e] = o
                    returns[s, e] += r
                    alive[s, e] = not (term or trunc)
            steps += 1
    for row in envs:
        for env in row:
            env.close()
    if return_states:
        return returns, [np.array(v, np.float32) for v in visited]
    return returns

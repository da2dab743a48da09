"""A replay buffer for S environments stepped together (case study 09).

Transitions are stored as (capacity, S, ...) NumPy arrays, one row per time step holding every
member's transition; `sample` draws each member's batch independently and returns
(S, batch, ...) float32 tensors, the layout of `bncourse.cases.rl.ensemble`. With S = 1 it is
the ordinary buffer of DQN (Mnih et al. 2015).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """A ring buffer of (obs, action, reward, next_obs, terminated) for S members.

    obs_dim: observation length; action_dim: 0 for a discrete action (stored as an integer),
    else the length of a continuous action. Oldest transitions are overwritten at `capacity`.
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int = 0, members: int = 1,
                 seed: int = 0) -> None:
        for name, value, low in (("capacity", capacity, 1), ("obs_dim", obs_dim, 1),
                                 ("action_dim", action_dim, 0), ("members", members, 1)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.capacity, self.obs_dim, self.action_dim, self.members = (
            int(capacity), int(obs_dim), int(action_dim), int(members))
        S = self.members
        self.obs = np.zeros((capacity, S, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, S, obs_dim), np.float32)
        if action_dim == 0:
            self.action = np.zeros((capacity, S), np.int64)
        else:
            self.action = np.zeros((capacity, S, action_dim), np.float32)
        self.reward = np.zeros((capacity, S), np.float32)
        self.terminated = np.zeros((capacity, S), np.float32)
        self.size, self._next = 0, 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        """Store one time step: obs, next_obs (S, obs_dim); action (S,) or (S, action_dim);
        reward, terminated (S,)."""
        S = self.members
        obs = np.asarray(obs, np.float32)
        next_obs = np.asarray(next_obs, np.float32)
        for name, value in (("obs", obs), ("next_obs", next_obs)):
            if value.shape != (S, self.obs_dim):
                raise ValueError(f"{name} must have shape (members={S}, obs_dim={self.obs_dim}),"
                                 f" got {value.shape}")
        action = np.asarray(action)
        want = (S,) if self.action_dim == 0 else (S, self.action_dim)
        if action.shape != want:
            raise ValueError(f"action must have shape {want}, got {action.shape}")
        reward, terminated = np.asarray(reward), np.asarray(terminated)
        for name, value in (("reward", reward), ("terminated", terminated)):
            if value.shape != (S,):
                raise ValueError(f"{name} must have shape ({S},), got {value.shape}")
        i = self._next
        self.obs[i], self.next_obs[i], self.action[i] = obs, next_obs, action
        self.reward[i], self.terminated[i] = reward, terminated
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> dict:
        """Each member's own uniform batch (indices drawn with replacement): a dict of
        (S, batch_size, ...) tensors: obs, action, reward, next_obs, terminated."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer: add transitions first")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size > self.size:
            raise ValueError(f"batch_size={batch_size} is larger than the buffer "
                             f"({self.size} transitions): sample fewer or add more")
        S = self.members
        rows = self.rng.integers(0, self.size, (S, batch_size))
        cols = np.arange(S)[:, None]  # (S, 1): member s reads column s
        out = {"obs": self.obs[rows, cols], "action": self.action[rows, cols],
               "reward": self.reward[rows, cols], "next_obs": self.next_obs[rows, cols],
               "terminated": self.terminated[rows, cols]}
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}

"""DQN (Mnih et al. 2015) on CartPole-v1, with or without batch norm in the Q-network (case 09).

Replay buffer, a hard-copied target network and epsilon-greedy exploration, for S seeds trained as
one batched ensemble (`ensemble.py`). The TD target for a transition (s, a, r, s', terminated) is

    y = r + gamma * (1 - terminated) * max_a' Q_target(s', a')

The BN pitfalls are switches of `DQNConfig`: `act_mode="train"` acts on a single state with BN in
train mode (torch raises "Expected more than 1 value per channel when training");
`target_mode="train"` computes the targets with the target network's batch statistics.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from bncourse.cases.rl.ensemble import ensemble_mlp, member_generators
from bncourse.cases.rl.evaluate import check_obs, seeded_envs
from bncourse.cases.rl.replay import ReplayBuffer

__all__ = ["DQNConfig", "DQNRun", "q_network", "td_target", "greedy_actions", "dqn_targets",
           "train_dqn"]

MODES = ("train", "eval")


@dataclass
class DQNConfig:
    """DQN's hyper-parameters (small, for a CPU: CartPole needs 10-30k steps to reach 500)."""

    hidden: int = 64               # two hidden layers of this width
    batch_norm: bool = False       # BN on the input and after each hidden ReLU
    bn_momentum: float = 0.1       # torch convention
    lr: float = 1e-3               # Adam
    gamma: float = 0.99
    batch_size: int = 64
    buffer_size: int = 20_000
    learning_starts: int = 1_000   # uniform-random actions before this step
    train_every: int = 1           # environment steps per gradient step
    target_every: int = 500        # steps between hard copies into the target network
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_steps: int = 5_000         # linear decay of epsilon over these steps
    act_mode: str = "eval"         # the pitfall: "train"
    target_mode: str = "eval"      # the pitfall: "train"

    def __post_init__(self) -> None:
        for name in ("act_mode", "target_mode"):
            if getattr(self, name) not in MODES:
                raise ValueError(f"{name} must be 'train' or 'eval', got {getattr(self, name)!r}")


@dataclass
class DQNRun:
    """What `train_dqn` returns: per-member episode returns and the step each episode ended."""

    seeds: list
    episode_returns: list = field(default_factory=list)  # per member: list of returns
    episode_ends: list = field(default_factory=list)     # per member: list of end steps
    q: nn.Module | None = None
    target: nn.Module | None = None
    buffer: ReplayBuffer | None = None
    config: DQNConfig | None = None

    def curve(self, bins) -> np.ndarray:
        """(S, len(bins) - 1) mean return of the episodes ending in each [bin, next bin)."""
        out = np.full((len(self.seeds), len(bins) - 1), np.nan)
        for s, (rets, ends) in enumerate(zip(self.episode_returns, self.episode_ends)):
            rets, ends = np.asarray(rets), np.asarray(ends)
            for b in range(len(bins) - 1):
                inside = (ends >= bins[b]) & (ends < bins[b + 1])
                if inside.any():
                    out[s, b] = rets[inside].mean()
        return out


def q_network(obs_dim: int, n_actions: int, seeds, hidden: int = 64, batch_norm: bool = False,
              momentum: float = 0.1) -> nn.Sequential:
    """S members' Q-networks (S, N, obs_dim) -> (S, N, n_actions); with `batch_norm`, BN on the
    input and after each hidden ReLU (the layout CrossQ uses)."""
    return ensemble_mlp([obs_dim, hidden, hidden, n_actions], member_generators(seeds),
                        norm=batch_norm, input_norm=batch_norm, momentum=momentum)


def td_target(reward: Tensor, terminated: Tensor, next_q: Tensor, gamma: float) -> Tensor:
    """y = r + gamma * (1 - terminated) * max_a' next_q[..., a'].

    reward, terminated: (...); next_q: (..., n_actions). A truncated episode (time limit) is not
    terminated: its next state still has a value.
    """
    if next_q.shape[:-1] != reward.shape or terminated.shape != reward.shape:
        raise ValueError(f"next_q must have shape reward.shape + (n_actions,) and terminated "
                         f"the shape of reward; got reward {tuple(reward.shape)}, terminated "
                         f"{tuple(terminated.shape)}, next_q {tuple(next_q.shape)}")
    return reward + gamma * (1.0 - terminated) * next_q.max(dim=-1).values


def greedy_actions(q: nn.Module, obs, mode: str = "eval") -> Tensor:
    """argmax_a Q(s, a) for obs (S, obs_dim) -> (S,), or (S, N, obs_dim) -> (S, N).

    mode="eval" (the fix) uses BN's running statistics; "train" normalises with the batch's own
    statistics: for a single state per member that is torch's ValueError. The module's mode is
    restored after.
    """
    first = q[0]
    members, obs_dim = first.members, (first.features if hasattr(first, "features")
                                       else first.fan_in)
    x = check_obs(obs, members, obs_dim)
    was = q.training
    q.train(mode == "train")
    try:
        with torch.no_grad():
            actions = q(x).argmax(dim=-1)
    finally:
        q.train(was)
    return actions[:, 0] if np.ndim(obs) == 2 else actions


def dqn_targets(target: nn.Module, batch: dict, gamma: float, mode: str = "eval") -> Tensor:
    """(S, B) TD targets from the target network in `mode` (eval: running statistics)."""
    target.train(mode == "train")
    with torch.no_grad():
        next_q = target(batch["next_obs"])
    return td_target(batch["reward"], batch["terminated"], next_q, gamma)


def _update(q, target, optimizer, batch, config) -> float:
    y = dqn_targets(target, batch, config.gamma, config.target_mode)
    q.train()
    q_sa = q(batch["obs"]).gather(2, batch["action"].unsqueeze(2)).squeeze(2)  # (S, B)
    # Mean over the batch, sum over members: each member's gradient is its own loss's.
    loss = nn.functional.smooth_l1_loss(q_sa, y, reduction="none").mean(dim=1).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach()) / q_sa.shape[0]


def train_dqn(seeds, steps: int, config: DQNConfig | None = None, env_id: str = "CartPole-v1",
              progress: bool = False) -> DQNRun:
    """Train one DQN per seed, all S at once, for `steps` environment steps each."""
    config = config or DQNConfig()
    seeds, envs = seeded_envs(seeds, steps, env_id)
    S = len(seeds)
    obs_dim, n_actions = envs[0].observation_space.shape[0], int(envs[0].action_space.n)
    q = q_network(obs_dim, n_actions, seeds, config.hidden, config.batch_norm,
                  config.bn_momentum)
    target = copy.deepcopy(q)
    optimizer = torch.optim.Adam(q.parameters(), lr=config.lr)
    buffer = ReplayBuffer(config.buffer_size, obs_dim, 0, S, seed=seeds[0])
    rng = np.random.default_rng(seeds)
    obs = np.stack([env.reset(seed=seed)[0] for env, seed in zip(envs, seeds)])
    for env, seed in zip(envs, seeds):
        env.action_space.seed(seed)
    run = DQNRun(seeds, [[] for _ in seeds], [[] for _ in seeds], q, target, buffer, config)
    running = np.zeros(S)
    bar = _bar(steps, progress)
    for t in range(steps):
        frac = min(1.0, t / max(1, config.eps_steps))
        epsilon = config.eps_start + frac * (config.eps_end - config.eps_start)
        explore = rng.random(S) < epsilon
        if t < config.learning_starts or explore.all():
            actions = rng.integers(0, n_actions, S)
        else:
            greedy = greedy_actions(q, obs, config.act_mode).numpy()
            actions = np.where(explore, rng.integers(0, n_actions, S), greedy)
        next_obs, after = np.empty_like(obs), np.empty_like(obs)
        rewards, terms = np.zeros(S), np.zeros(S)
        for s, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(int(actions[s]))
            next_obs[s], after[s], rewards[s], terms[s] = o, o, r, term
            running[s] += r
            if term or trunc:
                run.episode_returns[s].append(running[s])
                run.episode_ends[s].append(t)
                running[s] = 0.0
                after[s] = env.reset()[0]
        buffer.add(obs, actions, rewards, next_obs, terms)
        obs = after
        if t >= config.learning_starts and t % config.train_every == 0:
            _update(q, target, optimizer, buffer.sample(config.batch_size), config)
        if t % config.target_every == 0:
            target.load_state_dict(q.state_dict())
        bar.update(1)
    bar.close()
    q.eval()
    target.eval()
    for env in envs:
        env.close()
    return run


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool):
    """A tqdm bar when `enabled` (notebooks tag such cells nbval-ignore-output), else a no-op
    (tqdm is not even imported, so its warnings stay out of the outputs)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, leave=False)

"""A CrossQ-style BN actor-critic (Bhatt, Palenicek et al. 2024) and its SAC baseline (case 09).

Three variants of SAC (Haarnoja et al. 2018; twin critics, automatic entropy) on Pendulum-v1,
each for S seeds trained as one batched ensemble (`ensemble.py`):

    "crossq"    BN in critic and actor, no target network, Adam beta1 = 0.5, policy delay 3;
                the current (s, a) and next (s', a') batches go through the critic in ONE
                train-mode pass over cat([s, s']), cat([a, a']), so both halves share its
                batch statistics; the next half is then detached (the target).
    "separate"  the same, but two passes: (s, a) in train mode, (s', a') in eval mode (running
                statistics, momentum 0.01): the ablation, which does not learn.
    "sac"       no BN, a Polyak-averaged target critic (tau 0.005), Adam's default betas.

Soft TD target: y = r + gamma (1 - terminated) (min_k Q_k(s', a') - alpha log pi(a'|s')).
Modes follow the reference code (adityab/CrossQ, sbx, SB3-contrib): actor in eval mode to act
and to sample a'; critic in train mode for its loss; actor in train mode and critic in eval mode
for the actor loss. BN uses momentum 0.01 and eps 1e-3 as the references; their Batch Renorm runs
as plain BN for its first 100 000 steps, so a run this short is CrossQ with plain BN.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from bncourse.cases.rl.ensemble import ensemble_mlp, member_generators
from bncourse.cases.rl.evaluate import seeded_envs
from bncourse.cases.rl.replay import ReplayBuffer

__all__ = ["ActorCriticConfig", "ActorCriticRun", "VARIANTS", "PASS_MODES", "soft_td_target",
           "joint_critic_pass", "critic_values", "sample_action", "train_actor_critic"]

VARIANTS = ("crossq", "separate", "sac")

# Which network is in which mode in each forward pass (the references; '-' = not used).
PASS_MODES = {
    "acting":         {"actor": "eval", "critic": "-"},
    "next action a'": {"actor": "eval", "critic": "-"},
    "critic loss":    {"actor": "-", "critic": "train (one joint pass over s and s')"},
    "actor loss":     {"actor": "train", "critic": "eval"},
}


@dataclass
class ActorCriticConfig:
    """Hyper-parameters shared by the three variants (small, for a CPU)."""

    variant: str = "crossq"
    hidden: int = 64
    batch_size: int = 128
    lr: float = 1e-3              # actor, critic and alpha, as the references
    gamma: float = 0.99
    learning_starts: int = 1_000  # uniform-random actions, no updates, before this step
    buffer_size: int = 20_000
    bn_momentum: float = 0.01     # torch convention (flax 0.99)
    bn_eps: float = 1e-3
    tau: float = 0.005            # "sac" only
    policy_delay: int | None = None  # None: 3 with BN (CrossQ), 1 for "sac"
    beta1: float | None = None       # None: 0.5 with BN (CrossQ), 0.9 for "sac"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        bn = self.variant != "sac"
        self.policy_delay = self.policy_delay or (3 if bn else 1)
        self.beta1 = self.beta1 if self.beta1 is not None else (0.5 if bn else 0.9)


@dataclass
class ActorCriticRun:
    """Per-member training episode returns (S, episodes) and the trained networks."""

    seeds: list
    episode_returns: np.ndarray | None = None
    actor: nn.Module | None = None
    critic: nn.Module | None = None
    config: ActorCriticConfig | None = None
    buffer: ReplayBuffer | None = None
    seconds_per_step: float = field(default=float("nan"))


def soft_td_target(reward: Tensor, terminated: Tensor, next_q: Tensor, next_log_prob: Tensor,
                   alpha: Tensor, gamma: float) -> Tensor:
    """y = r + gamma (1 - terminated) (min_k next_q[..., k, :] - alpha log pi(a'|s')).

    reward, terminated, next_log_prob: (S, B); next_q: (S, K, B) for K critics; alpha: (S,).
    """
    soft = next_q.min(dim=1).values - alpha[:, None] * next_log_prob
    return reward + gamma * (1.0 - terminated) * soft


def critic_values(critic: nn.Module, obs: Tensor, action: Tensor) -> Tensor:
    """Q-values (S, 2, N) of each seed's two critics (members 2s, 2s+1) for obs (S, N, obs_dim)
    and actions (S, N, act_dim), in the critic's current mode."""
    x = torch.cat([obs, action], dim=2).repeat_interleave(2, dim=0)  # (2S, N, obs+act)
    q = critic(x)[..., 0]
    return q.reshape(obs.shape[0], 2, obs.shape[1])


def joint_critic_pass(critic: nn.Module, obs, action, next_obs, next_action):
    """CrossQ's critic pass: one train-mode forward over cat([s, s']), cat([a, a']) (S, 2B, .),
    split into Q(s, a) and the detached Q(s', a'), both (S, 2, B); BN's statistics are those of
    the joint batch, so the current and next halves are normalised alike."""
    B = obs.shape[1]
    critic.train()
    q_all = critic_values(critic, torch.cat([obs, next_obs], 1),
                          torch.cat([action, next_action], 1))  # (S, 2, 2B), one pass
    return q_all[..., :B], q_all[..., B:].detach()


def sample_action(actor: nn.Module, obs: Tensor, deterministic: bool = False):
    """A tanh-squashed Gaussian action in [-1, 1] (S, N, act) and its log-probability (S, N)."""
    mean, log_std = actor(obs).chunk(2, dim=-1)
    if deterministic:
        return torch.tanh(mean), None
    log_std = log_std.clamp(-5.0, 2.0)
    u = mean + log_std.exp() * torch.randn_like(mean)
    a = torch.tanh(u)
    log_prob = (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
                - torch.log(1 - a.pow(2) + 1e-6)).sum(dim=-1)
    return a, log_prob


def _update(nets, opts, batch, config, step) -> None:
    actor, critic, target, log_alpha = nets
    alpha = log_alpha.exp().detach()
    s, a, r, s2, d = (batch[k] for k in ("obs", "action", "reward", "next_obs", "terminated"))
    with torch.no_grad():
        actor.eval()  # a' ~ pi(s'): actor in eval mode, no gradient
        a2, logp2 = sample_action(actor, s2)
    if config.variant == "crossq":
        q, q_next = joint_critic_pass(critic, s, a, s2, a2)
    elif config.variant == "separate":
        critic.train()
        q = critic_values(critic, s, a)
        critic.eval()
        with torch.no_grad():
            q_next = critic_values(critic, s2, a2)
        critic.train()
    else:
        q = critic_values(critic, s, a)
        with torch.no_grad():
            q_next = critic_values(target, s2, a2)
    y = soft_td_target(r, d, q_next, logp2, alpha, config.gamma)
    critic_loss = ((q - y[:, None]) ** 2).mean(dim=2).sum()  # mean over batch, sum over nets
    opts[1].zero_grad()
    critic_loss.backward()
    opts[1].step()
    if step % config.policy_delay == 0:
        actor.train()
        critic.eval()  # the references evaluate the critic in eval mode for the actor loss
        a_pi, logp = sample_action(actor, s)
        q_pi = critic_values(critic, s, a_pi).min(dim=1).values
        actor_loss = (alpha[:, None] * logp - q_pi).mean(dim=1).sum()
        opts[0].zero_grad()
        actor_loss.backward()
        opts[0].step()
        alpha_loss = -(log_alpha[:, None] * (logp.detach() - a.shape[2])).mean(dim=1).sum()
        opts[2].zero_grad()
        alpha_loss.backward()
        opts[2].step()
        critic.train()
    if target is not None:
        with torch.no_grad():
            for p, tp in zip(critic.parameters(), target.parameters()):
                tp.lerp_(p, config.tau)


def build_networks(seeds, obs_dim: int, act_dim: int, config: ActorCriticConfig):
    """(actor, critic, target critic or None, log_alpha) for S seeds."""
    bn = config.variant != "sac"
    gens = member_generators(seeds)
    norm = dict(norm=bn, input_norm=bn, momentum=config.bn_momentum, eps=config.bn_eps)
    h = config.hidden
    actor = ensemble_mlp([obs_dim, h, h, 2 * act_dim], gens, **norm)
    critic_gens = member_generators([1000 * s + k for s in seeds for k in range(2)])
    critic = ensemble_mlp([obs_dim + act_dim, h, h, 1], critic_gens, **norm)
    target = copy.deepcopy(critic).requires_grad_(False) if not bn else None
    log_alpha = nn.Parameter(torch.zeros(len(seeds)))  # alpha starts at 1
    return actor, critic, target, log_alpha


def train_actor_critic(seeds, steps: int, config: ActorCriticConfig | None = None,
                       env_id: str = "Pendulum-v1", progress: bool = False) -> ActorCriticRun:
    """Train one agent per seed, all S at once, for `steps` environment steps (UTD 1)."""
    import time

    config = config or ActorCriticConfig()
    seeds, envs = seeded_envs(seeds, steps, env_id)
    S = len(seeds)
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]
    high = float(envs[0].action_space.high[0])
    nets = build_networks(seeds, obs_dim, act_dim, config)
    betas = (config.beta1, 0.999)
    opts = [torch.optim.Adam(p, lr=config.lr, betas=betas)
            for p in (nets[0].parameters(), nets[1].parameters(), [nets[3]])]
    buffer = ReplayBuffer(config.buffer_size, obs_dim, act_dim, S, seed=seeds[0])
    rng = np.random.default_rng(seeds)
    obs = np.stack([env.reset(seed=seed)[0] for env, seed in zip(envs, seeds)])
    returns, running = [[] for _ in seeds], np.zeros(S)
    from bncourse.cases.rl.dqn import _bar

    bar, start = _bar(steps, progress), time.perf_counter()
    for t in range(steps):
        if t < config.learning_starts:
            action = rng.uniform(-1, 1, (S, act_dim)).astype(np.float32)
        else:
            nets[0].eval()  # acting: actor in eval mode (running statistics)
            with torch.no_grad():
                action = sample_action(nets[0], torch.from_numpy(obs[:, None]))[0][:, 0]
            action = action.numpy()
        next_obs, after = np.empty_like(obs), np.empty_like(obs)
        rewards, terms = np.zeros(S), np.zeros(S)
        for s, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(action[s] * high)
            next_obs[s], after[s], rewards[s], terms[s] = o, o, r, term
            running[s] += r
            if term or trunc:
                returns[s].append(running[s])
                running[s] = 0.0
                after[s] = env.reset()[0]
        buffer.add(obs, action, rewards, next_obs, terms)
        obs = after
        if t >= config.learning_starts:
            _update(nets, opts, buffer.sample(config.batch_size), config, t)
        bar.update(1)
    bar.close()
    for env in envs:
        env.close()
    nets[0].eval()
    nets[1].eval()
    n = min(len(r) for r in returns)
    return ActorCriticRun(seeds, np.array([r[:n] for r in returns]), nets[0], nets[1], config,
                          buffer, (time.perf_counter() - start) / steps)

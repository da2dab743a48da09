"""Tests for bncourse.cases.rl (case study 09): buffer, ensemble, DQN and CrossQ pieces,
evaluation."""
import copy

import numpy as np
import pytest
import torch

import bncourse.nn as bnn
from bncourse.cases import rl
from bncourse.cases.rl.crossq import build_networks


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


# --- replay buffer --------------------------------------------------------------------------

def _filled(n=10, members=2, action_dim=0):
    buf = rl.ReplayBuffer(5, 3, action_dim, members, seed=0)
    for i in range(n):
        obs = np.full((members, 3), i, np.float32)
        action = np.full(members, i % 2) if action_dim == 0 else np.zeros((members, action_dim))
        buf.add(obs, action, np.full(members, float(i)), obs + 1, np.zeros(members))
    return buf


def test_buffer_ring_and_sample_shapes():
    buf = _filled(10)
    assert len(buf) == 5  # capacity
    batch = buf.sample(4)
    assert batch["obs"].shape == (2, 4, 3) and batch["action"].shape == (2, 4)
    assert batch["action"].dtype == torch.int64 and batch["obs"].dtype == torch.float32
    # only the 5 newest transitions (5..9) remain; next_obs = obs + 1, reward = obs
    assert batch["reward"].min() >= 5
    torch.testing.assert_close(batch["next_obs"], batch["obs"] + 1)
    torch.testing.assert_close(batch["reward"], batch["obs"][..., 0])


def test_buffer_members_sample_their_own_columns():
    buf = rl.ReplayBuffer(8, 1, 0, 3, seed=1)
    for _ in range(8):
        buf.add(np.arange(3, dtype=np.float32)[:, None], np.zeros(3), np.zeros(3),
                np.zeros((3, 1)), np.zeros(3))
    batch = buf.sample(5)
    for s in range(3):
        assert torch.all(batch["obs"][s] == s)


def test_buffer_continuous_actions():
    batch = _filled(6, action_dim=2).sample(3)
    assert batch["action"].shape == (2, 3, 2) and batch["action"].dtype == torch.float32


@pytest.mark.parametrize("call, match", [
    (lambda b: b.add(np.zeros((2, 4)), np.zeros(2), np.zeros(2), np.zeros((2, 3)), np.zeros(2)),
     "obs must have shape"),
    (lambda b: b.add(np.zeros((2, 3)), np.zeros(2), np.zeros(2), np.zeros(3), np.zeros(2)),
     "next_obs must have shape"),
    (lambda b: b.add(np.zeros((2, 3)), np.zeros(3), np.zeros(2), np.zeros((2, 3)), np.zeros(2)),
     "action must have shape"),
    (lambda b: b.add(np.zeros((2, 3)), np.zeros(2), np.zeros(1), np.zeros((2, 3)), np.zeros(2)),
     "reward must have shape"),
    (lambda b: b.sample(1), "empty buffer"),
])
def test_buffer_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(rl.ReplayBuffer(5, 3, 0, 2))


def test_buffer_batch_larger_than_buffer():
    with pytest.raises(ValueError, match="batch_size=9 is larger than the buffer"):
        _filled(3).sample(9)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        _filled(3).sample(0)
    with pytest.raises(ValueError, match="capacity must be an integer"):
        rl.ReplayBuffer(0, 3)


# --- ensemble --------------------------------------------------------------------------------

def test_ensemble_linear_matches_members_and_is_seeded():
    gens = rl.member_generators([0, 1])
    layer = rl.EnsembleLinear(3, 4, gens)
    x = torch.randn(2, 5, 3)
    y = layer(x)
    for s in range(2):
        torch.testing.assert_close(y[s], x[s] @ layer.weight[s] + layer.bias[s])
    # member 1 alone gets the same weights as in the pair
    alone = rl.EnsembleLinear(3, 4, rl.member_generators([1]))
    torch.testing.assert_close(alone.weight[0], layer.weight[1])
    with pytest.raises(ValueError, match=r"x must have shape \(S=2, N, 3\)"):
        layer(torch.randn(2, 5, 4))


def test_ensemble_batchnorm_is_per_member_course_layer():
    bn = rl.EnsembleBatchNorm(3, 4, momentum=0.01, eps=1e-3)
    assert isinstance(bn.bn, bnn.BatchNorm1d) and bn.bn.num_features == 12
    x = torch.randn(3, 8, 4) * torch.tensor([1.0, 5.0, 0.1])[:, None, None]
    refs = [bnn.BatchNorm1d(4, momentum=0.01, eps=1e-3) for _ in range(3)]
    torch.testing.assert_close(bn(x), torch.stack([r(x[s]) for s, r in enumerate(refs)]))
    torch.testing.assert_close(bn.running_mean(), torch.stack([r.running_mean for r in refs]))
    bn.eval()
    torch.testing.assert_close(bn(x[:, :1]), torch.stack([r.eval()(x[s, :1])
                                                          for s, r in enumerate(refs)]))


# --- DQN pieces -------------------------------------------------------------------------------

def test_td_target_table():
    reward = torch.tensor([1.0, 1.0, 0.5])
    terminated = torch.tensor([0.0, 1.0, 0.0])
    next_q = torch.tensor([[2.0, 3.0], [5.0, 4.0], [-1.0, -2.0]])
    y = rl.td_target(reward, terminated, next_q, 0.9)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 3.0, 1.0, 0.5 - 0.9]))
    with pytest.raises(ValueError, match="next_q must have shape"):
        rl.td_target(reward, terminated, next_q[:2], 0.9)


def test_greedy_actions_eval_mode_and_train_mode_error():
    q = rl.q_network(4, 2, [0, 1], hidden=8, batch_norm=True).train()
    q(torch.randn(2, 32, 4))  # give the running statistics something
    obs = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    actions = rl.greedy_actions(q, obs)
    assert actions.shape == (2,) and q.training  # the mode is restored
    with torch.no_grad():
        expected = q.eval()(torch.from_numpy(obs)[:, None]).argmax(-1)[:, 0]
    q.train()
    torch.testing.assert_close(actions, expected)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        rl.greedy_actions(q, obs, mode="train")
    assert q.training
    with pytest.raises(ValueError, match=r"obs must have shape \(members=2, obs_dim=4\)"):
        rl.greedy_actions(q, np.zeros((2, 5)))


def test_dqn_targets_modes():
    q = rl.q_network(4, 2, [0, 1], hidden=8, batch_norm=True)
    batch = {"next_obs": torch.randn(2, 16, 4) * 3 + 1, "reward": torch.ones(2, 16),
             "terminated": torch.zeros(2, 16)}
    before = copy.deepcopy(q.state_dict())
    y_eval = rl.dqn_targets(q, batch, 0.99, "eval")
    for k, v in q.state_dict().items():
        torch.testing.assert_close(v, before[k])  # eval mode changes nothing
    y_train = rl.dqn_targets(q, batch, 0.99, "train")
    assert not torch.allclose(y_eval, y_train)
    assert int(q[0].bn.num_batches_tracked) == 1  # train mode updated the statistics


def test_dqn_config_and_train_errors():
    with pytest.raises(ValueError, match="act_mode must be 'train' or 'eval'"):
        rl.DQNConfig(act_mode="test")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        rl.train_dqn([0], 0)
    with pytest.raises(ValueError, match="seeds must list"):
        rl.train_dqn([], 10)


def test_train_dqn_short_is_deterministic_and_act_in_train_mode_fails():
    config = rl.DQNConfig(batch_norm=True, hidden=8, learning_starts=50, batch_size=16)
    a = rl.train_dqn([0, 1], 120, config)
    b = rl.train_dqn([0, 1], 120, config)
    assert a.episode_returns == b.episode_returns
    for k, v in a.q.state_dict().items():
        torch.testing.assert_close(v, b.q.state_dict()[k])
    assert not a.q.training
    bins = np.array([0, 60, 120])
    assert a.curve(bins).shape == (2, 2)
    bad = rl.DQNConfig(batch_norm=True, hidden=8, learning_starts=5, eps_steps=1, eps_end=0.0,
                       act_mode="train")
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        rl.train_dqn([0], 20, bad)


# --- CrossQ pieces ----------------------------------------------------------------------------

def test_soft_td_target():
    reward, terminated = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]])
    next_q = torch.tensor([[[3.0, 1.0], [2.0, 5.0]]])  # (S=1, K=2, B=2)
    logp = torch.tensor([[0.5, 0.5]])
    y = rl.soft_td_target(reward, terminated, next_q, logp, torch.tensor([0.2]), 0.9)
    torch.testing.assert_close(y, torch.tensor([[1.0 + 0.9 * (2.0 - 0.1), 2.0]]))


def test_joint_pass_shares_statistics_and_detaches_target():
    config = rl.ActorCriticConfig(variant="crossq", hidden=8)
    _, critic, target, _ = build_networks([0, 1], 3, 1, config)
    assert target is None
    s, a = torch.randn(2, 6, 3), torch.rand(2, 6, 1)
    s2, a2 = torch.randn(2, 6, 3) + 2, torch.rand(2, 6, 1) - 1
    probe = copy.deepcopy(critic)
    q, q_next = rl.joint_critic_pass(critic, s, a, s2, a2)
    assert q.shape == q_next.shape == (2, 2, 6)
    assert q.requires_grad and not q_next.requires_grad and critic.training
    assert int(critic[0].bn.num_batches_tracked) == 1  # one pass, one statistics update
    expected = rl.critic_values(probe.train(), torch.cat([s, s2], 1), torch.cat([a, a2], 1))
    torch.testing.assert_close(torch.cat([q, q_next], 2), expected)
    separate = rl.critic_values(copy.deepcopy(probe).train(), s, a)
    assert not torch.allclose(q, separate)  # the halves were normalised with joint statistics


def test_pass_modes_follow_the_references():
    assert rl.PASS_MODES["acting"]["actor"] == "eval"
    assert rl.PASS_MODES["next action a'"]["actor"] == "eval"
    assert rl.PASS_MODES["actor loss"] == {"actor": "train", "critic": "eval"}


def test_actor_critic_config_defaults_and_errors():
    crossq, sac = rl.ActorCriticConfig("crossq"), rl.ActorCriticConfig("sac")
    assert crossq.beta1 == 0.5 and crossq.policy_delay == 3
    assert sac.beta1 == 0.9 and sac.policy_delay == 1
    with pytest.raises(ValueError, match="variant must be one of"):
        rl.ActorCriticConfig("ddpg")


@pytest.mark.parametrize("variant", rl.VARIANTS)
def test_train_actor_critic_short_and_deterministic(variant):
    config = rl.ActorCriticConfig(variant=variant, hidden=8, batch_size=16, learning_starts=30)
    a = rl.train_actor_critic([0, 1], 60, config, env_id="Pendulum-v1")
    b = rl.train_actor_critic([0, 1], 60, config, env_id="Pendulum-v1")
    for k, v in a.critic.state_dict().items():
        torch.testing.assert_close(v, b.critic.state_dict()[k])
    assert not a.actor.training and not a.critic.training


# --- evaluation -------------------------------------------------------------------------------

def test_evaluate_is_deterministic_and_restores_modes():
    q = rl.q_network(4, 2, [0, 1, 2], hidden=8, batch_norm=True).train()
    q(torch.randn(3, 32, 4))
    policy = lambda obs: q(obs).argmax(-1)
    r1, states = rl.evaluate(policy, [q], "CartPole-v1", 3, episodes=2, return_states=True)
    r2 = rl.evaluate(policy, [q], "CartPole-v1", 3, episodes=2)
    np.testing.assert_array_equal(r1, r2)
    assert r1.shape == (3, 2) and q.training
    assert [len(s) for s in states] == list(r1.sum(1).astype(int))  # one state per reward
    with pytest.raises(ValueError, match="episodes must be a positive integer"):
        rl.evaluate(policy, [q], "CartPole-v1", 3, episodes=0)


def test_eval_mode_context_restores_nested_modes():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), bnn.BatchNorm1d(2))
    net.train()
    net[1].eval()
    with rl.eval_mode(net):
        assert not net.training and not net[1].training
    assert net.training and not net[1].training


def test_check_obs_and_plot():
    x = rl.check_obs(np.zeros((2, 3)), 2, 3)
    assert x.shape == (2, 1, 3)
    with pytest.raises(ValueError, match="obs must have shape"):
        rl.check_obs(np.zeros(3), 2, 3)
    fig = rl.plot_seed_curves([1, 2], {"a": np.ones((3, 2))}, "x", "y", "t")
    assert fig.axes[0].get_xlabel() == "x"
    with pytest.raises(ValueError, match="must have shape"):
        rl.plot_seed_curves([1, 2], {"a": np.ones((3, 3))}, "x", "y", "t")
    with pytest.raises(ValueError, match="at least one"):
        rl.plot_seed_curves([1], {}, "x", "y", "t")

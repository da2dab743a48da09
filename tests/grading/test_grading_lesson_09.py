"""Module 09 checks (BN in RL): the solution passes, a stub is "not implemented yet", and each
typical mistake of a broken BN agent gets its hint."""
import pytest
import torch

import bncourse
from grading_helpers import solution_cells


@pytest.fixture(scope="module")
def solution():
    namespace = {}
    for source in solution_cells("09_case_rl_exercises.ipynb"):
        exec(source, namespace)  # the solution notebook's code cells (check calls dropped)
    return namespace


def _check(exercise_id, obj):
    return bncourse.check(exercise_id, obj, quiet=True)


def _messages(report):
    return " | ".join(c.message for c in report.result.checks)


NAMES = ("act", "dqn_target", "critic_pass", "set_modes", "two_state_prediction")


@pytest.mark.parametrize("name", NAMES)
def test_solution_passes(solution, name):
    report = _check(f"09.{name}", solution[name])
    assert report.passed, report.text()


@pytest.mark.parametrize("name", NAMES)
def test_stub_is_not_implemented(name):
    def stub(*args):
        raise NotImplementedError

    report = _check(f"09.{name}", stub)
    assert report.score == 0 and report.not_implemented
    assert "not implemented yet" in report.text()


# --- typical mistakes ---------------------------------------------------------------------

def act_train_mode(q_net, obs):
    return int(q_net(torch.as_tensor(obs)[None]).argmax())


def act_no_restore(q_net, obs):
    q_net.eval()
    with torch.no_grad():
        return int(q_net(torch.as_tensor(obs)[None]).argmax())


def act_batch_of_copies(q_net, obs):
    with torch.no_grad():
        return int(q_net(torch.as_tensor(obs)[None].repeat(2, 1))[0].argmax())


def target_train_mode(target_net, reward, terminated, next_obs, gamma):
    target_net.train()
    with torch.no_grad():
        return reward + gamma * (1 - terminated) * target_net(next_obs).max(1).values


def target_no_terminal(target_net, reward, terminated, next_obs, gamma):
    target_net.eval()
    with torch.no_grad():
        return reward + gamma * target_net(next_obs).max(1).values


def target_mean(target_net, reward, terminated, next_obs, gamma):
    target_net.eval()
    with torch.no_grad():
        return reward + gamma * (1 - terminated) * target_net(next_obs).mean(1)


def target_with_grad(target_net, reward, terminated, next_obs, gamma):
    target_net.eval()
    return reward + gamma * (1 - terminated) * target_net(next_obs).max(1).values


def critic_separate_eval(critic, obs, action, next_obs, next_action):
    critic.train()
    q = critic(torch.cat([obs, action], 1))[:, 0]
    critic.eval()
    with torch.no_grad():
        q_next = critic(torch.cat([next_obs, next_action], 1))[:, 0]
    critic.train()
    return q, q_next


def critic_separate_train(critic, obs, action, next_obs, next_action):
    critic.train()
    q = critic(torch.cat([obs, action], 1))[:, 0]
    q_next = critic(torch.cat([next_obs, next_action], 1))[:, 0].detach()
    return q, q_next


def critic_not_detached(critic, obs, action, next_obs, next_action):
    critic.train()
    B = obs.shape[0]
    q_all = critic(torch.cat([torch.cat([obs, action], 1), torch.cat([next_obs, next_action], 1)]))
    return q_all[:B, 0], q_all[B:, 0]


def modes_all_train(actor, critic, phase):
    actor.train()
    critic.train()


def modes_actor_loss_critic_train(actor, critic, phase):
    if phase in ("act", "next_action"):
        actor.eval()
    else:
        actor.train()
        critic.train()


def modes_do_nothing(actor, critic, phase):
    pass


@pytest.mark.parametrize("exercise, wrong, hint", [
    ("09.set_modes", modes_do_nothing, "mode. Hint"),
    ("09.act", act_train_mode, "the network is in train mode"),
    ("09.act", act_no_restore, "restore it"),
    ("09.act", act_batch_of_copies, "running statistics (eval mode)"),
    ("09.dqn_target", target_train_mode, "the target network was in train mode"),
    ("09.dqn_target", target_no_terminal, "multiply by (1 - terminated)"),
    ("09.dqn_target", target_mean, "not the mean"),
    ("09.dqn_target", target_with_grad, "torch.no_grad()"),
    ("09.critic_pass", critic_separate_eval, "separate-passes ablation"),
    ("09.critic_pass", critic_separate_train, "normalised with the next batch alone"),
    ("09.critic_pass", critic_not_detached, "detach it"),
    ("09.set_modes", modes_all_train, "acting uses running statistics"),
    ("09.set_modes", modes_actor_loss_critic_train, "the critic only scores its actions"),
    ("09.two_state_prediction", lambda: 0.7071, "biased variance"),
    ("09.two_state_prediction", lambda: 0.0, "not zero"),
])
def test_mistakes_get_their_hint(exercise, wrong, hint):
    report = _check(exercise, wrong)
    assert not report.passed
    assert hint in _messages(report), _messages(report)


def test_checks_are_fast(solution):
    import time

    start = time.perf_counter()
    for name in NAMES:
        _check(f"09.{name}", solution[name])
    assert time.perf_counter() - start < 30

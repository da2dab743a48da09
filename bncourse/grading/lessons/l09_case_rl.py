"""Module 09 exercises (case study 09, BN in reinforcement learning): fix a broken BN agent.

`act` (greedy action for one state: eval mode, mode restored), `dqn_target` (the TD target from an
eval-mode target network), `critic_pass` (CrossQ's joint pass), `set_modes` (which network is in
which mode in each pass) and `two_state_prediction` (what train-mode BN does to a batch of two).
The inputs are plain torch networks with the course's `BatchNorm1d`, built from hidden weights and
running statistics that are far from the statistics of the states, so every mode mistake shows.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, SubmissionError, array_mismatch, as_array
from bncourse.grading.lessons._rl_networks import build_net, net_inputs, norms, stats, tensors
from bncourse.grading.drivers.l09_case_rl import (TRAIN_MODE_ERROR, _run_act, _run_target, _run_critic, _run_modes, _run_prediction)  # noqa: F401

__all__ = ["EXERCISES", "reference_act", "reference_dqn_target", "reference_critic_pass",
           "reference_set_modes", "reference_two_state_prediction", "PHASES"]

MODULE = "09"
NOTEBOOK = "09_case_rl_exercises.ipynb"
USES_COURSE_LAYERS = True  # may import bncourse.nn, models (sandbox: not sealed)
REQUIRED = True  # for the certificate

FORBIDDEN = tuple(f"bncourse.cases.rl.{name}" for name in (
    "greedy_actions", "dqn_targets", "td_target", "joint_critic_pass", "soft_td_target")) + tuple(
    f"bncourse.cases.rl.{module}.{name}" for module, name in (
        ("dqn", "greedy_actions"), ("dqn", "dqn_targets"), ("dqn", "td_target"),
        ("crossq", "joint_critic_pass"), ("crossq", "soft_td_target")))
PHASES = ("act", "next_action", "critic_loss", "actor_loss")
# --- act ------------------------------------------------------------------------------------


def reference_act(q_net, obs):
    """argmax_a Q(obs, a) with BN's running statistics; q_net's mode restored."""
    import torch

    from bncourse.cases.rl.evaluate import eval_mode

    with eval_mode(q_net), torch.no_grad():
        return int(q_net(torch.as_tensor(obs, dtype=torch.float32)[None]).argmax(-1))


def _act_inputs(rng):
    spec = net_inputs(rng, [4, 16, 16, 3], input_norm=True)
    spec["states"] = (rng.normal(0, 1, (12, 4)) * np.array([1, 2, 0.2, 2])).astype(np.float32)
    return spec


def _compare_act(got, expected, inputs):
    if got["train_mode_error"]:
        return ("BN raised 'Expected more than 1 value per channel when training'. Hint: the "
                "network is in train mode; one state has no batch statistics, so act with the "
                "running statistics")
    if got["actions"] != expected["actions"]:
        wrong = sum(a != b for a, b in zip(got["actions"], expected["actions"]))
        return (f"{wrong} of {len(expected['actions'])} actions differ from the greedy actions "
                f"of the eval-mode network. Hint: normalise with the running statistics (eval "
                f"mode), not with the statistics of a batch you made up from the state")
    return None


def _compare_act_modes(got, expected, inputs):
    message = _compare_act(got, expected, inputs)
    if message:
        return message
    if not got["stats_unchanged"]:
        return "acting changed BN's running statistics: acting must not update them"
    if not got["still_training"]:
        return ("after act the network is no longer in train mode. Hint: remember its mode "
                "and restore it, the next gradient step needs train mode")
    return None


ACT = Exercise(
    uses_course_layers=True, module="09", name="act", kind="function", run=_run_act,
    reference=lambda: reference_act, forbidden=FORBIDDEN,
    checks=(Check("greedy actions of the eval-mode network, one state at a time", _act_inputs,
                  _compare_act),
            Check("running statistics unchanged, train mode restored", _act_inputs,
                  _compare_act_modes)),
)

# --- dqn_target -----------------------------------------------------------------------------


def reference_dqn_target(target_net, reward, terminated, next_obs, gamma):
    """y = r + gamma (1 - terminated) max_a' Q_target(s', a'), target net in eval mode."""
    import torch

    from bncourse.cases.rl.dqn import td_target

    target_net.eval()
    with torch.no_grad():
        return td_target(reward, terminated, target_net(next_obs), gamma)


def _target_inputs(gamma=0.97):
    def make(rng):
        spec = net_inputs(rng, [4, 16, 16, 3], input_norm=True)
        B = 32
        spec.update(next_obs=(rng.normal(0.5, 1.5, (B, 4))).astype(np.float32),
                    reward=rng.uniform(-1, 1, B).astype(np.float32),
                    terminated=(rng.random(B) < 0.3).astype(np.float32), gamma=gamma)
        return spec
    return make


def _target_alternatives(inputs):
    import torch

    reward, terminated, next_obs = tensors(inputs, "reward", "terminated", "next_obs")
    g = inputs["gamma"]
    with torch.no_grad():  # fresh networks: a train-mode pass moves the running statistics
        q_train = build_net(inputs, True)(next_obs).numpy()
        q_eval = build_net(inputs, False)(next_obs).numpy()
    r, d = reward.numpy(), terminated.numpy()
    return (
        ("the target network was in train mode (batch statistics of the next states): compute "
         "targets in eval mode", lambda: r + g * (1 - d) * q_train.max(1)),
        ("a terminated transition has no next value: multiply by (1 - terminated)",
         lambda: r + g * q_eval.max(1)),
        ("the target takes the max over next actions, not the mean",
         lambda: r + g * (1 - d) * q_eval.mean(1)),
    )


def _compare_target(got, expected, inputs):
    message = array_mismatch(got["y"], expected["y"], "y", rtol=1e-4, atol=1e-5,
                             hints=_target_alternatives(inputs))
    if message:
        return message
    if got["requires_grad"]:
        return "the target must not carry a gradient: compute it under torch.no_grad()"
    if not got["stats_unchanged"]:
        return ("the target network's running statistics changed: it ran in train mode "
                "somewhere")
    return None


DQN_TARGET = Exercise(
    uses_course_layers=True, module="09", name="dqn_target", kind="function", run=_run_target,
    reference=lambda: reference_dqn_target, forbidden=FORBIDDEN,
    checks=(Check("TD targets, gamma 0.97", _target_inputs(0.97), _compare_target),
            Check("TD targets, gamma 0.9", _target_inputs(0.9), _compare_target)),
)

# --- critic_pass ----------------------------------------------------------------------------


def reference_critic_pass(critic, obs, action, next_obs, next_action):
    """CrossQ: one train-mode pass over cat([s, s']), cat([a, a']); returns (Q(s,a), detached
    Q(s',a')), each (B,)."""
    import torch

    B = obs.shape[0]
    critic.train()
    q_all = critic(torch.cat([torch.cat([obs, action], 1), torch.cat([next_obs, next_action], 1)]))
    return q_all[:B, 0], q_all[B:, 0].detach()


def _critic_inputs(rng):
    spec = net_inputs(rng, [4, 16, 16, 1], input_norm=True)
    B = 24
    spec.update(obs=rng.normal(0, 1, (B, 3)).astype(np.float32),
                action=rng.uniform(-1, 1, (B, 1)).astype(np.float32),
                next_obs=rng.normal(0.3, 1.2, (B, 3)).astype(np.float32),
                next_action=np.tanh(rng.normal(0.8, 0.3, (B, 1))).astype(np.float32))
    spec["start_training"] = bool(rng.random() < 0.5)
    return spec


def _critic_alternatives(inputs, which):
    import torch

    s, a, s2, a2 = tensors(inputs, "obs", "action", "next_obs", "next_action")
    with torch.no_grad():
        sep_q = build_net(inputs, True)(torch.cat([s, a], 1))[:, 0].numpy()
        sep_next_train = build_net(inputs, True)(torch.cat([s2, a2], 1))[:, 0].numpy()
        next_eval = build_net(inputs, False)(torch.cat([s2, a2], 1))[:, 0].numpy()
        after_current = build_net(inputs, True)
        after_current(torch.cat([s, a], 1))  # the current pass first moves the statistics
        next_eval_after = after_current.eval()(torch.cat([s2, a2], 1))[:, 0].numpy()
    if which == "q":
        return (("Q(s, a) was normalised with the current batch alone: put [s; s'] and "
                 "[a; a'] through the critic in ONE train-mode pass", lambda: sep_q),)
    return (("Q(s', a') came from eval mode (running statistics): that is the separate-passes "
             "ablation that does not learn; use one joint train-mode pass",
             lambda: next_eval),
            ("Q(s', a') came from eval mode (running statistics): that is the separate-passes "
             "ablation that does not learn; use one joint train-mode pass",
             lambda: next_eval_after),
            ("Q(s', a') was normalised with the next batch alone: use one joint pass",
             lambda: sep_next_train))


def _compare_critic(got, expected, inputs):
    for name in ("q_next", "q"):  # the target half first: its hints name the ablation
        message = array_mismatch(got[name], expected[name], name, rtol=1e-4, atol=1e-5,
                                 hints=_critic_alternatives(inputs, name))
        if message:
            return message
    return None


def _compare_critic_side(got, expected, inputs):
    message = _compare_critic(got, expected, inputs)
    if message:
        return message
    if not got["q_grad"]:
        return "Q(s, a) must carry a gradient (the critic loss is backpropagated through it)"
    if got["q_next_grad"]:
        return "Q(s', a') is the target: detach it (stop the gradient)"
    if got["updates"] != expected["updates"]:
        return (f"BN's statistics were updated {got['updates']} times, expected "
                f"{expected['updates']}: one joint pass is one update")
    if not got["training"]:
        return "leave the critic in train mode after its pass"
    return array_mismatch(got["stats"], expected["stats"], "the running statistics", rtol=1e-5,
                          atol=1e-6)


CRITIC_PASS = Exercise(
    uses_course_layers=True, module="09", name="critic_pass", kind="function", run=_run_critic,
    reference=lambda: reference_critic_pass, forbidden=FORBIDDEN,
    checks=(Check("Q(s, a) and Q(s', a') from one joint pass", _critic_inputs, _compare_critic),
            Check("gradients, one statistics update, train mode", _critic_inputs,
                  _compare_critic_side)),
)

# --- set_modes ------------------------------------------------------------------------------


def reference_set_modes(actor, critic, phase):
    """The modes of `bncourse.cases.rl.PASS_MODES` (adityab/CrossQ, sbx, SB3-contrib)."""
    from bncourse.cases.rl.crossq import PASS_MODES

    row = PASS_MODES[{"act": "acting", "next_action": "next action a'",
                      "critic_loss": "critic loss", "actor_loss": "actor loss"}[phase]]
    for net, mode in ((actor, row["actor"]), (critic, row["critic"])):
        if mode != "-":
            net.train(mode.startswith("train"))


# Each phase starts the networks in the opposite of the modes it needs (train = True), so doing
# nothing never passes; an unused network starts at random.
_WRONG_START = {"act": (True, None), "next_action": (True, None), "critic_loss": (None, False),
                "actor_loss": (False, True)}


def _modes_inputs(phase):
    def make(rng):
        coin = [bool(b) for b in rng.random(2) < 0.5]
        start = [c if w is None else w for w, c in zip(_WRONG_START[phase], coin)]
        return {"actor": net_inputs(rng, [3, 8, 8, 2], input_norm=True),
                "critic": net_inputs(rng, [4, 8, 8, 1], input_norm=True),
                "start": start, "phase": phase}
    return make


def _compare_modes(got, expected, inputs):
    from bncourse.cases.rl.crossq import PASS_MODES

    phase = inputs["phase"]
    row = PASS_MODES[{"act": "acting", "next_action": "next action a'",
                      "critic_loss": "critic loss", "actor_loss": "actor loss"}[phase]]
    for net in ("actor", "critic"):
        if row[net] == "-":
            continue
        want = row[net].startswith("train")
        if any(m != want for m in got[net]):
            return (f"in phase {phase!r} the {net}'s BN layers must be in "
                    f"{'train' if want else 'eval'} mode. Hint: "
                    + {"act": "acting uses running statistics (any batch size, no side effects)",
                       "next_action": "sampling a' for the target is not training the actor",
                       "critic_loss": "the critic's loss pass normalises with batch statistics",
                       "actor_loss": ("the actor trains (train mode); the critic only scores its "
                                      "actions, with running statistics")}[phase])
    return None


SET_MODES = Exercise(
    uses_course_layers=True, module="09", name="set_modes", kind="function", run=_run_modes,
    reference=lambda: reference_set_modes, forbidden=(),
    checks=tuple(Check(f"phase {phase!r}", _modes_inputs(phase), _compare_modes)
                 for phase in PHASES),
)

# --- two_state_prediction -------------------------------------------------------------------


def reference_two_state_prediction():
    """|x_hat| of train-mode BN (eps 1e-5) on a batch of two different states, measured."""
    import torch

    from bncourse.nn import BatchNorm1d

    x = torch.tensor([[0.3, -2.0, 5.0], [1.1, 4.0, 4.0]])
    return float(BatchNorm1d(3, affine=False).train()(x).abs().mean())


def _compare_prediction(got, expected, inputs):
    value = got["value"]
    if abs(value - expected["value"]) < 0.01:
        return None
    if abs(value - 1 / np.sqrt(2)) < 0.01:
        return ("not quite: BN normalises with the biased variance (divide by N, not N - 1). "
                "Work it out for two values a and b")
    if abs(value) < 0.01:
        return ("not zero: x - mean is ±(a - b)/2 for the two values a, b; divide that by "
                "their standard deviation")
    return "work it out for two values a and b: mean (a + b)/2, biased variance ((a - b)/2)^2"


TWO_STATE_PREDICTION = Exercise(
    uses_course_layers=True, module="09", name="two_state_prediction", kind="function", run=_run_prediction,
    reference=lambda: reference_two_state_prediction, forbidden=(),
    checks=(Check("|x_hat| for a batch of two", lambda rng: {}, _compare_prediction),),
)

EXERCISES = (ACT, DQN_TARGET, CRITIC_PASS, SET_MODES, TWO_STATE_PREDICTION)

"""Case study 09: batch normalization in reinforcement learning (gymnasium classic control).

    ensemble.py   S seeds' networks as one batched computation; per-seed BN via BatchNorm1d(S*H)
    replay.py     the replay buffer
    dqn.py        DQN on CartPole-v1 with or without BN, and its BN pitfalls as switches
    crossq.py     a CrossQ-style BN actor-critic, its separate-passes ablation, a SAC baseline
    evaluate.py   evaluation: eval mode, fixed start states
    plots.py      learning curves over seeds (mean, spread, per-seed lines)
"""
from bncourse.cases.rl.crossq import (PASS_MODES, VARIANTS, ActorCriticConfig, ActorCriticRun,
                                      critic_values, joint_critic_pass, sample_action,
                                      soft_td_target, train_actor_critic)
from bncourse.cases.rl.dqn import (DQNConfig, DQNRun, dqn_targets, greedy_actions, q_network,
                                   td_target, train_dqn)
from bncourse.cases.rl.ensemble import (EnsembleBatchNorm, EnsembleLinear, ensemble_mlp,
                                        member_generators)
from bncourse.cases.rl.evaluate import check_obs, eval_mode, evaluate
from bncourse.cases.rl.plots import plot_seed_curves
from bncourse.cases.rl.replay import ReplayBuffer

__all__ = ["ActorCriticConfig", "ActorCriticRun", "DQNConfig", "DQNRun", "EnsembleBatchNorm",
           "EnsembleLinear", "PASS_MODES", "ReplayBuffer", "VARIANTS", "check_obs",
           "critic_values", "dqn_targets", "ensemble_mlp", "eval_mode", "evaluate",
           "greedy_actions", "joint_critic_pass", "member_generators", "plot_seed_curves",
           "q_network", "sample_action", "soft_td_target", "train_actor_critic", "train_dqn"]

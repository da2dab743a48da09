"""Experiment code the case-study notebooks call in one line (the top layer of the package).

    vision.py     case study 06: Ioffe & Szegedy 2015 in miniature (Fig. 1, Table 1)
    charlm.py     case study 08: character language models, LSTM vs BN-LSTM vs LN-LSTM
    charlm_failures.py  case study 08: where per-step batch statistics hurt (measurements)
    smoothness.py lesson 07: noisy BN, internal covariate shift (Def. 2.1), the landscape
                  along the gradient (Santurkar et al. 2018)
    bn_scale.py   lesson 07: scale invariance, effective learning rate, weight decay's
                  equilibrium, learning-rate sweep, gradients at initialisation
    rl/           case study 09: DQN on CartPole, a CrossQ-style BN critic on Pendulum

Each module imports from `bncourse.nn`, `data`, `models`, `train`, `plots`, never the reverse.
"""

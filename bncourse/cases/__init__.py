"""Experiment code the case-study notebooks call in one line (the top layer of the package).

    vision.py     case study 06: Ioffe & Szegedy 2015 in miniature (Fig. 1, Table 1)
    charlm.py     case study 08: character language models, LSTM vs BN-LSTM vs LN-LSTM
    charlm_failures.py  case study 08: where per-step batch statistics hurt (measurements)
    smoothness.py lesson 07: noisy BN, internal covariate shift (Def. 2.1), the landscape
                  along the gradient (Santurkar et al. 2018)
    bn_scale.py   lesson 07: scale invariance, effective learning rate, weight decay's
                  equilibrium, learning-rate sweep, gradients at initialisation
    rl/           case study 09: DQN on CartPole, a CrossQ-style BN critic on Pendulum
    variants.py   lesson 10: accuracy against batch size for BN, GroupNorm, LayerNorm, Batch
                  Renorm and none; train/eval disagreement; Ghost BN
    distributed.py  lesson 11: K gloo processes on one machine (or torchrun), SyncBN training
    capstone.py   lesson 12: a 1-D CNN on padded sequences, masked recalibration

Each module imports from `bncourse.nn`, `data`, `models`, `train`, `plots`, never the reverse.
"""

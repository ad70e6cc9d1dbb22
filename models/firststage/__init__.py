"""The first stage: the numpy scorer (the score formula, written once), its training in torch, federated rounds
of its shared part, the training recipe every agent runs (``recipe``) and the models fitted for evaluation
(``fit``). Only ``training`` and ``fit`` import torch.
"""

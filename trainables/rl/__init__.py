"""Reinforcement-learning trainables on RLlib's new API stack (DQN on Atari, CRR and BC offline).

Each method module registers a train function with :func:`trainables.registry.register`, like the supervised
trainables; :mod:`trainables.rl.common` is their shared loop around an RLlib ``Algorithm``.
"""

"""Reinforcement-learning trainables on RLlib's new API stack (DQN on Atari, CRR and BC offline).

Each method registers a train function with :func:`trainables.registry.register`, like the supervised trainables:
``dqn`` (the package :mod:`trainables.rl.dqn`), ``crr`` (:mod:`trainables.rl.crr`) and ``bc``
(:mod:`trainables.rl.bc`). :mod:`trainables.rl.common` is their shared loop around an RLlib ``Algorithm``, and
:mod:`trainables.rl.play` their shared ``play`` tool for checkpoints.
"""

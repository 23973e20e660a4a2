"""Algorithm 1 of Mnih et al. (2013) as RLlib's DQN with its own ``training_step`` over a compact replay memory.

    Initialize replay memory D to capacity N; action-value function Q with random weights
    for episode = 1, M do
        for t = 1, T do
            With probability epsilon select a random action a_t, otherwise a_t = argmax_a Q(phi(s_t), a; theta)
            Execute a_t in the emulator and observe reward r_t and image x_{t+1}
            Store transition (phi_t, a_t, r_t, phi_{t+1}) in D
            Sample random minibatch of transitions from D; gradient step on (y_j - Q(phi_j, a_j; theta))^2

Per round of :meth:`PaperDQN.training_step`: act ``rollout_fragment_length`` steps epsilon-greedily (RLlib's env
runners, :mod:`trainables.rl.dqn.module`), store the transitions in D (:class:`~trainables.rl.frame_replay.FrameReplay`,
each frame once), then one minibatch update of ``batch_size`` per ``train_freq`` sampled steps, all of the round's
minibatches in ONE learner call (a batch of n x 32 split into n consecutive minibatches of 32, one gradient step
each; the loss is :mod:`trainables.rl.dqn.learner`'s). So the env runner acts up to one fragment (64 steps) with the
same theta where the paper updates in between. RLlib's own loop replays through its episode buffer instead, which
builds one episode object per sampled transition and runs the learner connector pipeline on them (profiled: 40% of
an Atari step went to such bookkeeping).
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.dqn import DQN
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    REPLAY_BUFFER_ADD_DATA_TIMER,
    REPLAY_BUFFER_SAMPLE_TIMER,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

from trainables.rl.frame_replay import FrameReplay

REPLAY_STATE = "frame_replay"  # the replay memory's key in the algorithm state (only with checkpoint_replay)


class PaperDQN(DQN):
    """RLlib's DQN (env runners, learner group, checkpoints, evaluation) running the loop above."""

    def setup(self, config: Any) -> None:
        super().setup(config)
        if self.config.n_step != 1:
            raise ValueError(f"the frame replay memory stores one-step transitions, got n_step={config.n_step}")
        obs_space = self.env_runner_group.get_spaces()[DEFAULT_MODULE_ID][0]
        image = len(obs_space.shape) == 3  # (k, H, W) frame stacks from atari.FrameStack
        self.frame_replay = FrameReplay(
            self.config.replay_buffer_config["capacity"],
            obs_space.shape,
            obs_space.dtype,
            stacked=image,
            seed=self.config.seed,
        )
        self._updates_owed = 0.0  # fractional minibatch updates carried to the next round

    def training_step(self) -> None:
        config = self.config
        batch_size = config.train_batch_size_per_learner
        # 1. act: select a_t epsilon-greedily, execute it, observe r_t and x_{t+1} (rollout_fragment_length steps)
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            episodes, runner_metrics = synchronous_parallel_sample(
                worker_set=self.env_runner_group,
                concat=True,
                sample_timeout_s=config.sample_timeout_s,
                _uses_new_env_runners=True,
                _return_metrics=True,
            )
        self.metrics.aggregate(runner_metrics, key=ENV_RUNNER_RESULTS)
        # 2. store the transitions (phi_t, a_t, r_t, phi_{t+1}) in D
        with self.metrics.log_time((TIMERS, REPLAY_BUFFER_ADD_DATA_TIMER)):
            sampled = self.frame_replay.add_episodes(episodes)
        steps = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
        if steps < config.num_steps_sampled_before_learning_starts or len(self.frame_replay) == 0:
            return
        # 3. one minibatch of 32 per train_freq sampled steps: training_intensity = batch_size / train_freq
        #    replayed transitions per sampled one (a fractional remainder carries over to the next round)
        self._updates_owed += sampled * config.training_intensity / batch_size
        updates = int(self._updates_owed)
        self._updates_owed -= updates
        if updates == 0:
            return
        with self.metrics.log_time((TIMERS, REPLAY_BUFFER_SAMPLE_TIMER)):
            # random minibatches of transitions from D: obs, new_obs, actions, rewards, terminateds, truncateds
            columns = self.frame_replay.sample(updates * batch_size)
            batch = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(columns)}, env_steps=updates * batch_size)
        # 4. gradient steps on (y_j - Q(phi_j, a_j; theta))^2 (PaperDQNLearner.compute_loss_for_module); the batch
        #    goes straight to the learner: no learner connector runs
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            results = self.learner_group.update(
                batch=batch,
                minibatch_size=batch_size,
                num_epochs=1,
                shuffle_batch_per_epoch=False,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: steps,
                    NUM_AGENT_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME), default={}
                    ),
                },
            )
            self.metrics.aggregate(results, key=LEARNER_RESULTS)
        # 5. the env runners act with the new theta
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, policies={DEFAULT_MODULE_ID}, inference_only=True
            )

    # The memory goes into checkpoints only with store_buffer_in_checkpoints (checkpoint_replay); RLlib's new stack
    # saves no replay buffer at all.
    def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        if self.config.store_buffer_in_checkpoints:
            state[REPLAY_STATE] = self.frame_replay.get_state()
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if REPLAY_STATE in state and self.config.store_buffer_in_checkpoints:
            self.frame_replay.set_state(state[REPLAY_STATE])

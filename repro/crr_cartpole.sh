#!/usr/bin/env bash
# CRR (binary, exp) vs BC on mixed-quality and expert-only CartPole data, and on mixed Pendulum data, 3 seeds each.
# The commands behind docs/RESULTS.md (Part IV), as they were run (2-core CPU, shared). About 60 min in total.
#   bash repro/crr_cartpole.sh [WORKDIR]        (WORKDIR default /tmp/crr)
# Runs the registered trainables `crr` and `bc` in-process (LocalContext, no Tune/MLflow); under Tune the same runs
# are `python -m orchestrator.rl crr --env ... --data DIR --set ...`.
set -euo pipefail
W=${1:-/tmp/crr}
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$W/data"

# ---- behaviour policies: RLlib PPO expert (CartPole), untrained PPO module; RLlib SAC expert + untrained (Pendulum)
cat > "$W/behaviour.py" <<'EOF'
"""Save RLlib algorithms as <out>/algorithm: `ppo OUT ITERS` (ITERS=0: untrained; else stop at return 475) and
`sac OUT` (also OUT_untrained; stops at training return > -200 or 15 min)."""
import os, sys, time
import ray, torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.sac import SACConfig
torch.set_num_threads(1)
kind, out = sys.argv[1], sys.argv[2]
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
if kind == "ppo":
    algo = (PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=0)
            .training(train_batch_size_per_learner=2000, minibatch_size=250, num_epochs=6, lr=3e-4)
            .debugging(seed=0 if int(sys.argv[3]) else 1)).build_algo()  # seed 1: the untrained net we used
    for i in range(int(sys.argv[3])):
        ret = algo.train()["env_runners"].get("episode_return_mean")
        print(i, ret, flush=True)
        if ret is not None and ret >= 475 and i > 10:
            break
else:
    algo = (SACConfig().environment("Pendulum-v1").env_runners(num_env_runners=0, rollout_fragment_length=1)
            .training(train_batch_size_per_learner=256, actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3,
                      num_steps_sampled_before_learning_starts=1000,
                      replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 50000})
            .rl_module(model_config={"fcnet_hiddens": [128, 128]})
            .reporting(min_time_s_per_iteration=10).debugging(seed=0)).build_algo()
    algo.save_to_path(os.path.join(out + "_untrained", "algorithm"))
    t0 = time.time()
    while time.time() - t0 < 900:
        ret = algo.train()["env_runners"].get("episode_return_mean")
        print(round(time.time() - t0), ret, flush=True)
        if ret is not None and ret > -200:
            break
algo.save_to_path(os.path.join(out, "algorithm"))
algo.stop()
EOF

# ---- runs: registered trainables over seeds, one JSON line per run
cat > "$W/runs.py" <<'EOF'
"""python runs.py DATA SEEDS NAME:key=value,... ...  -> one JSON line per (run, seed) with every evaluation."""
import json, sys, time
import ray, torch
from trainables import registry
from trainables.context import LocalContext
torch.set_num_threads(1)
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
data, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
for run in sys.argv[3:]:
    name, _, sets = run.partition(":")
    spec = registry.get(name)
    over = dict(kv.split("=") for kv in filter(None, sets.split(",")))
    typed = {k: [int(x) for x in v.split("x")] if isinstance(spec.defaults[k], list) else type(spec.defaults[k])(v)
             for k, v in over.items()}
    for seed in seeds:
        ctx, started = LocalContext(), time.time()
        spec.train(spec.resolve({**typed, "data": data, "seed": seed}), ctx)
        evals = [r["eval_return_mean"] for r in ctx.results if "eval_return_mean" in r]
        last = {k: round(v, 3) for k, v in ctx.results[-1].items() if k.startswith("learner/")}
        print(json.dumps({"run": run, "seed": seed, "data": data, "final_eval": evals[-1], "evals": evals,
                          "rows": ctx.results[-1]["env_steps"], "last": last,
                          "seconds": round(time.time() - started, 1)}), flush=True)
EOF

python "$W/behaviour.py" ppo "$W/expert" 60
python "$W/behaviour.py" ppo "$W/untrained" 0
python "$W/behaviour.py" sac "$W/pendulum_expert"

# ---- datasets (record tool of the crr trainable; orchestrator: python -m orchestrator.rl record ...)
python - "$W" <<'EOF'
import json, sys
from trainables import registry
record, W = registry.tool("record"), sys.argv[1]
E, U = f"checkpoint:{W}/expert", f"checkpoint:{W}/untrained"
for name, env, policies, episodes, seed in [
    ("cartpole_mixed", "CartPole-v1",
     [E + "@episodes=4", U + "@episodes=100", U + "@eps=0.3,episodes=50", "random@episodes=100"], 1, 1),
    ("cartpole_expert", "CartPole-v1", [E], 20, 2),
    ("pendulum_mixed", "Pendulum-v1", [f"checkpoint:{W}/pendulum_expert@episodes=5",
                                       f"checkpoint:{W}/pendulum_expert_untrained@episodes=20", "random@episodes=20"],
     1, 1),
]:
    stats = record(env_id=env, policies=policies, episodes=episodes, out_dir=f"{W}/data/{name}", seed=seed)
    print(name, json.dumps(stats["overall"]),
          {k: (round(v["return_mean"], 1), v["rows"]) for k, v in stats["policies"].items()})
EOF

# ---- CRR-binary, CRR-exp, BC: 3 seeds, same network / batch / budget
C="train_rows=768000,hiddens=64x64,updates_per_iteration=500"
for D in cartpole_mixed cartpole_expert; do
  python "$W/runs.py" "$W/data/$D" 0,1,2 \
    "crr:weight_type=binary,$C,critic_lr=0.001,actor_lr=0.001" \
    "crr:weight_type=exp,$C,critic_lr=0.001,actor_lr=0.001" \
    "bc:$C,lr=0.001" | grep --line-buffered '^{' | tee -a "$W/results_$D.jsonl"
done
P="env=Pendulum-v1,train_rows=512000,hiddens=64x64,updates_per_iteration=500,evaluation_episodes=5"
python "$W/runs.py" "$W/data/pendulum_mixed" 0,1,2 \
  "crr:weight_type=binary,$P,critic_lr=0.001,actor_lr=0.001" \
  "crr:weight_type=exp,$P,critic_lr=0.001,actor_lr=0.001" \
  "bc:$P,lr=0.001" | grep --line-buffered '^{' | tee -a "$W/results_pendulum_mixed.jsonl"
# Pendulum again with 3.6x the gradient steps (9 iterations of 1,000)
P="env=Pendulum-v1,train_rows=2048000,hiddens=64x64,updates_per_iteration=1000,evaluation_episodes=5"
python "$W/runs.py" "$W/data/pendulum_mixed" 0,1,2 \
  "crr:weight_type=exp,$P,critic_lr=0.001,actor_lr=0.001" \
  "bc:$P,lr=0.001" \
  "crr:weight_type=binary,$P,critic_lr=0.001,actor_lr=0.001" | grep --line-buffered '^{' | tee -a "$W/results_pendulum_long.jsonl"

# ---- table: final evaluation (10 or 5 episodes) and the mean of the last three evaluations, mean +- std over seeds
python - "$W" <<'EOF'
import json, statistics as st, sys
for d in ["cartpole_mixed", "cartpole_expert", "pendulum_mixed", "pendulum_long"]:
    rows = [json.loads(line) for line in open(f"{sys.argv[1]}/results_{d}.jsonl")]
    for run in dict.fromkeys(r["run"] for r in rows):
        rs = [r for r in rows if r["run"] == run]
        final, last3 = [r["final_eval"] for r in rs], [st.mean(r["evals"][-3:]) for r in rs]
        print(f"| {d} | {run.split(',')[0]} | {len(rs)} | {st.mean(final):.1f} ± {st.stdev(final):.1f} | "
              f"{st.mean(last3):.1f} ± {st.stdev(last3):.1f} |")
EOF

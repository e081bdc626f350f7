"""The trade-off search's front against the hand-set weights of RewardConfig, on simulator data.

Run: make run; .venv/bin/python bench/bench_tradeoffs.py [--home .recsys] [--version V]
         [--confirm-seeds 3] [--out bench/results/tradeoffs.json]

`recsys tune`'s search (pipeline/tuning.py, its default budget of TradeoffConfig) on the pushed
model of a home whose data is the built-in dataset: the hypervolume of the front and of the
hand-set point alone (components/evaluation/tradeoffs.py defines both), which front points
dominate the hand-set one, and the search's wall time. The search scores on ~100 validation users'
rollouts, so a point may dominate by luck: the hand-set and the chosen weighting are scored again
on rollouts of all the world's users with `--confirm-seeds` other seeds, paired per seed.
Writes the results file and the satisfaction-versus-revenue plot (seed 003) beside it.
"""
import argparse
import dataclasses
import json
import pathlib
import sys

import matplotlib
matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from components.evaluation import tradeoffs  # noqa: E402
from components.models import queries  # noqa: E402
from components.models.config import OBJECTIVES  # noqa: E402
from pipeline import configs  # noqa: E402
from pipeline import tuning  # noqa: E402

REVENUE, SATISFACTION = "simulator_revenue_per_user", "simulator_satisfaction"
# Seeds of the confirmation rollouts start here, away from the search's.
_CONFIRM_SEED_OFFSET = 1000


def _confirm(config: configs.PipelineConfig, version: int, validation: tradeoffs.ValidationSet,
             result: tradeoffs.SearchResult, seeds: int) -> dict:
  """Hand-set and chosen weighting on rollouts of every world user, per seed and paired."""
  model = queries.RankingSignature(config.model_base_path / str(version))
  everyone = dataclasses.replace(validation, world_users=np.arange(validation.world.n_users))
  weights = model.saved_model.q_network.objective_weights
  scores = {}
  for name, number in (("handset", 0), ("chosen", result.chosen)):
    weights.assign([result.trial(number).weights[objective] for objective in OBJECTIVES])
    scores[name] = [tradeoffs.measure(model, everyone, result.metrics,
                                      _CONFIRM_SEED_OFFSET + seed, config.tradeoffs.rollouts)
                    for seed in range(seeds)]
  difference = {}
  for metric in result.metrics:
    paired = np.array([chosen[metric] - handset[metric]
                       for chosen, handset in zip(scores["chosen"], scores["handset"])])
    half = 1.96 * paired.std(ddof=1) / np.sqrt(len(paired)) if len(paired) > 1 else float("nan")
    difference[metric] = {"handset": float(np.mean([s[metric] for s in scores["handset"]])),
                          "chosen": float(np.mean([s[metric] for s in scores["chosen"]])),
                          "difference": float(paired.mean()), "interval": [
                              float(paired.mean() - half), float(paired.mean() + half)]}
  return {"users": int(validation.world.n_users), "seeds": seeds, "metrics": difference}


def _plot(result: tradeoffs.SearchResult, path: pathlib.Path) -> None:
  points = {trial.number: trial.metrics for trial in result.trials}
  figure, axes = pyplot.subplots(figsize=(6, 4.5))
  axes.scatter([p[REVENUE] for p in points.values()], [p[SATISFACTION] for p in points.values()],
               c="lightgray", label="weightings tried")
  two_d = [n for n, p in points.items()
           if not any(tradeoffs.dominates(q, p, [REVENUE, SATISFACTION]) for q in points.values())]
  two_d.sort(key=lambda n: points[n][REVENUE])
  axes.plot([points[n][REVENUE] for n in two_d], [points[n][SATISFACTION] for n in two_d], "o-",
            c="tab:blue", label="revenue-satisfaction front")
  for number, label, marker in ((0, "hand-set (RewardConfig)", "s"),
                                (result.chosen, f"chosen ({result.choice})", "*")):
    axes.scatter([points[number][REVENUE]], [points[number][SATISFACTION]], marker=marker, s=150,
                 c="tab:red" if number == 0 else "tab:green", label=label, zorder=3)
  axes.set_xlabel("revenue per user (validation users, simulator)")
  axes.set_ylabel("satisfaction at session end")
  axes.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--home", default=".recsys")
  parser.add_argument("--version", type=int)
  parser.add_argument("--confirm-seeds", type=int, default=3)
  parser.add_argument("--out", default="bench/results/tradeoffs.json")
  args = parser.parse_args()
  config = configs.PipelineConfig().with_overrides(home=pathlib.Path(args.home).resolve())
  version, validation = tuning.validation_set(config, args.version)
  result, _ = tuning.tune(config, version, validation=validation)
  if REVENUE not in result.metrics:
    raise SystemExit(f"{args.home}'s model was not trained on simulator data: no rollouts")
  out = pathlib.Path(args.out)
  plot = out.with_name(out.stem + "_satisfaction_revenue.png")
  _plot(result, plot)
  summary = {
      "version": version, "trials": len(result.trials), "front": len(result.front),
      "seconds": round(result.seconds, 1), "hypervolume_front": result.hypervolume,
      "hypervolume_handset": result.handset_hypervolume, "dominating_handset": result.dominating,
      "handset": dataclasses.asdict(result.handset),
      "chosen": dataclasses.asdict(result.trial(result.chosen)), "choice": result.choice,
      "confirmation": _confirm(config, version, validation, result, args.confirm_seeds),
      "plot": str(plot)}
  out.write_text(json.dumps(summary, indent=2))
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  main()

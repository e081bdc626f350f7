"""The evaluation stage: how good a candidate model is, and whether it ships.

  ranking_metrics.py       top-k accuracy as the Microsoft Recommenders benchmark defines it
  beyond_accuracy.py       coverage, diversity, novelty, exposure
  off_policy.py            estimators of a ranking policy's reward from logged slates
  model_evaluation.py      the evaluation run of one model on the held-out data
  tradeoffs.py             the evolutionary search over the ranking head's combiner weights
  config.py                the search's settings (no TensorFlow)
  release_gate.py          the rules that bless or refuse a candidate
  candidate_evaluation.py  candidate and baseline, judged and written (ModelEvaluator's logic)
  report.py                the HTML report
"""

"""The evaluation report: one self-contained HTML page per run, charts embedded as PNG images.

It renders the record components/evaluation/candidate_evaluation.py writes (`evaluation.json`): the
verdict, a metric table against the baseline, the most-popular ranking and the candidate's
retrieval stage, bars per gated metric, Pareto-front scatters of candidate, baseline and earlier
blessed models, off-policy estimates with their intervals, and slices. Self-contained so that it
opens from an artifact store, a CI page or an e-mail alike.
"""
import base64
import html
import io
import itertools
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
from matplotlib import pyplot  # pylint: disable=g-import-not-at-top,wrong-import-position

from components.evaluation import release_gate  # pylint: disable=wrong-import-position

CANDIDATE_COLOR, BASELINE_COLOR, PAST_COLOR = "#1f77b4", "#ff7f0e", "#9e9e9e"
# Pareto scatters drawn at most: one per pair of Pareto metrics.
_MAX_PARETO_PLOTS = 3
# The rankings the metric table shows beside the baseline: record key -> column heading.
_REFERENCE_RANKINGS = {"popularity": "most popular", "retrieval_stage": "retrieval stage"}
_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
img { max-width: 100%; height: auto; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.blessed { color: #1b5e20; } .refused { color: #b71c1c; } .fail { background: #ffebee; }
"""


def render(record: Dict) -> str:
  """The HTML page for an evaluation record (candidate_evaluation.EvaluationResult.to_dict())."""
  gate = release_gate.GateConfig.from_yaml(record["gate"])
  candidate, baseline = record["candidate"], record["baseline"]
  verdict = record["verdict"]
  sections = [
      f"<h1>Model evaluation</h1><p class=\"{'blessed' if verdict['blessed'] else 'refused'}\">"
      f"<b>{html.escape(verdict['reason'])}</b></p>",
      f"<h2>Metrics</h2><p>Over {candidate['queries']} held-out engagements; "
      f"{candidate['repeat_queries']} re-engagements with an item of the history are left out, "
      "as seen items are removed from the lists. The retrieval stage is the candidate's own "
      "ranking before its DQN head reranks it (the <code>retrieve</code> signature).</p>"
      + _metric_table(gate, candidate, baseline,
                      [record.get(key) for key in _REFERENCE_RANKINGS], verdict),
      "<h2>Gated metrics</h2>" + _gated_section(gate, candidate, baseline),
  ]
  pareto = [name for name in gate.pareto_metrics if name in candidate["metrics"]]
  if len(pareto) >= 2:
    sections.append("<h2>Pareto front</h2><p>Candidate, baseline and earlier blessed models on "
                    "each pair of Pareto metrics (earlier models on their own runs' data).</p>"
                    + "".join(_image(_pareto_scatter(x, y, candidate, baseline,
                                                     record.get("past_models", [])))
                              for x, y in itertools.islice(
                                  itertools.combinations(pareto, 2), _MAX_PARETO_PLOTS)))
  if record.get("tradeoffs"):
    sections.append(_tradeoff_section(record["tradeoffs"], record.get("past_models", [])))
  if candidate["off_policy"]:
    sections.append("<h2>Off-policy estimates (95% intervals)</h2>"
                    + _off_policy_table(candidate, baseline)
                    + _image(_off_policy_plot(candidate, baseline)))
  else:
    sections.append("<h2>Off-policy estimates</h2><p>None: the eval data carry no logging "
                    "propensities.</p>")
  sections.append("<h2>Slices</h2>" + _slice_tables(candidate, baseline))
  return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Model evaluation</title>"
          f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>")


def _setting(setting: Optional[tuple]) -> str:
  return "" if setting is None else f"{setting[1]:g} {setting[0]}"


def _metric_table(gate: release_gate.GateConfig, candidate: Dict, baseline: Optional[Dict],
                  rankings: List[Optional[Dict]], verdict: Dict) -> str:
  """`rankings`: the records of _REFERENCE_RANKINGS, in its order, None where there is none."""
  rules = {rule.name: rule for rule in gate.rules}
  failed = {failure["metric"] for failure in verdict["failures"]}
  failed |= {name for failure in verdict["failures"] for name in failure["metric"].split(",")}
  rows = ["<tr><th>metric</th><th>candidate</th><th>baseline</th><th>change</th>"
          + "".join(f"<th>{heading}</th>" for heading in _REFERENCE_RANKINGS.values())
          + "<th>floor</th><th>over popularity</th><th>max regression</th><th>Pareto</th>"
          "<th>max rerank loss</th><th>weight</th></tr>"]
  for name, value in sorted(candidate["metrics"].items(), key=lambda item: (
      item[0] not in rules, item[0])):
    reference = baseline["metrics"].get(name) if baseline else None
    rule = rules.get(name)
    cells = [name, f"{value:.4f}", _number(reference),
             "" if reference is None else f"{value - reference:+.4f}"]
    cells += [_number(ranking["metrics"].get(name) if ranking else None) for ranking in rankings]
    if rule:
      cells += [_number(rule.floor), _setting(rule.over_popularity),
                _setting(rule.max_regression), "yes" if rule.pareto else "",
                _setting(rule.max_rerank_loss), f"{rule.weight:g}"]
    else:
      cells += [""] * 6
    css = " class=\"fail\"" if name in failed else ""
    rows.append(f"<tr{css}>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells)
                + "</tr>")
  not_measured = verdict.get("not_measured") or []
  note = (f"<p>Configured but not measured on these data: {html.escape(', '.join(not_measured))}"
          "</p>" if not_measured else "")
  return f"<table>{''.join(rows)}</table>{note}"


def _number(value: Optional[float]) -> str:
  return "" if value is None else f"{value:.4f}"


def _gated_section(gate: release_gate.GateConfig, candidate: Dict,
                   baseline: Optional[Dict]) -> str:
  """Bars of the gated metrics that were measured; a sentence when none was (e.g. a gate of
  simulator metrics on a user's own data, which the simulator does not know)."""
  names = [rule.name for rule in gate.rules if rule.name in candidate["metrics"]]
  if not names:
    return "<p>None of the gated metrics was measured on these data.</p>"
  return _image(_gated_bars(gate, names, candidate, baseline))


def _gated_bars(gate: release_gate.GateConfig, names: List[str], candidate: Dict,
                baseline: Optional[Dict]):
  figure, axes = pyplot.subplots(1, len(names), figsize=(2.2 * len(names), 3), squeeze=False)
  for axis, name in zip(axes[0], names):
    labels, values, colors = ["candidate"], [candidate["metrics"][name]], [CANDIDATE_COLOR]
    if baseline and name in baseline["metrics"]:
      labels.append("baseline")
      values.append(baseline["metrics"][name])
      colors.append(BASELINE_COLOR)
    axis.bar(labels, values, color=colors)
    floor = next(rule.floor for rule in gate.rules if rule.name == name)
    if floor is not None:
      axis.axhline(floor, color="#b71c1c", linestyle="--", linewidth=1)
    axis.set_title(name, fontsize=9)
    axis.tick_params(labelsize=8)
  figure.tight_layout()
  return figure


def _pareto_scatter(x: str, y: str, candidate: Dict, baseline: Optional[Dict],
                    past_models: List[Dict]):
  figure, axis = pyplot.subplots(figsize=(4.5, 3.5))
  past = [model["metrics"] for model in past_models
          if x in model["metrics"] and y in model["metrics"]]
  if past:
    axis.scatter([metrics[x] for metrics in past], [metrics[y] for metrics in past],
                 color=PAST_COLOR, label="earlier blessed")
  if baseline and x in baseline["metrics"] and y in baseline["metrics"]:
    axis.scatter([baseline["metrics"][x]], [baseline["metrics"][y]], color=BASELINE_COLOR,
                 s=80, label="baseline")
  axis.scatter([candidate["metrics"][x]], [candidate["metrics"][y]], color=CANDIDATE_COLOR,
               marker="*", s=160, label="candidate")
  axis.set_xlabel(x)
  axis.set_ylabel(y)
  axis.legend(fontsize=8)
  figure.tight_layout()
  return figure


def _tradeoff_section(searches: Dict, past_models: List[Dict]) -> str:
  """The searched fronts of candidate and baseline on pairs of the search's metrics (seed 003's
  revenue against satisfaction first where measured), and the hypervolume over runs."""
  volumes = searches["hypervolumes"]
  metrics = searches["candidate"]["metrics"]
  first = [name for name in ("simulator_revenue_per_user", "simulator_satisfaction")
           if name in metrics]
  pairs = ([tuple(first)] if len(first) == 2 else []) + [
      pair for pair in itertools.combinations(metrics, 2) if pair != tuple(first)]
  history = [(model["name"], model["hypervolume"]) for model in past_models
             if model.get("hypervolume") is not None]
  history.append(("candidate", volumes["candidate"]))
  return ("<h2>Trade-offs</h2><p>The combiner weightings the search tried on the validation "
          f"users: front hypervolume {volumes['candidate']:.4g} for the candidate against "
          f"{volumes['baseline']:.4g} for the baseline, both from the baseline's hand-set point "
          "(gate rule 6).</p>"
          + "".join(_image(_front_scatter(x, y, searches))
                    for x, y in pairs[:_MAX_PARETO_PLOTS])
          + _image(_hypervolume_plot(history)))


def _front_scatter(x: str, y: str, searches: Dict):
  figure, axis = pyplot.subplots(figsize=(4.5, 3.5))
  for name, color in (("baseline", BASELINE_COLOR), ("candidate", CANDIDATE_COLOR)):
    search = searches[name]
    trials = {trial["number"]: trial["metrics"] for trial in search["trials"]}
    front = [trials[number] for number in search["front"]]
    axis.scatter([point[x] for point in front], [point[y] for point in front], color=color,
                 alpha=0.5, label=f"{name} front")
    axis.scatter([trials[search["chosen"]][x]], [trials[search["chosen"]][y]], color=color,
                 marker="*", s=160, label=f"{name} chosen")
    axis.scatter([trials[0][x]], [trials[0][y]], color=color, marker="s", s=80,
                 edgecolor="black", label=f"{name} as served" if name == "candidate"
                 else "blessed model as served")
  axis.set_xlabel(x)
  axis.set_ylabel(y)
  axis.legend(fontsize=7)
  figure.tight_layout()
  return figure


def _hypervolume_plot(history: List[tuple]):
  figure, axis = pyplot.subplots(figsize=(4.5, 3))
  axis.plot(range(len(history)), [volume for _, volume in history], "o-", color=CANDIDATE_COLOR)
  axis.set_xticks(range(len(history)), [name for name, _ in history], rotation=30, ha="right",
                  fontsize=7)
  axis.set_ylabel("front hypervolume")
  figure.tight_layout()
  return figure


def _off_policy_table(candidate: Dict, baseline: Optional[Dict]) -> str:
  rows = ["<tr><th>estimate</th><th>candidate</th><th>baseline</th><th>sessions</th></tr>"]
  for name, estimate in candidate["off_policy"].items():
    other = baseline["off_policy"].get(name) if baseline else None
    rows.append(f"<tr><td>{name}</td><td>{_interval(estimate)}</td>"
                f"<td>{_interval(other) if other else ''}</td>"
                f"<td>{estimate['n_sessions']}</td></tr>")
  return f"<table>{''.join(rows)}</table>"


def _interval(estimate: Dict) -> str:
  return f"{estimate['value']:.4f} [{estimate['low']:.4f}, {estimate['high']:.4f}]"


def _off_policy_plot(candidate: Dict, baseline: Optional[Dict]):
  names = list(candidate["off_policy"])
  figure, axes = pyplot.subplots(1, len(names), figsize=(2.4 * len(names), 3), squeeze=False)
  for axis, name in zip(axes[0], names):
    models = [("candidate", candidate["off_policy"][name], CANDIDATE_COLOR)]
    if baseline and name in baseline["off_policy"]:
      models.append(("baseline", baseline["off_policy"][name], BASELINE_COLOR))
    for position, (label, estimate, color) in enumerate(models):
      axis.errorbar([position], [estimate["value"]],
                    yerr=[[estimate["value"] - estimate["low"]],
                          [estimate["high"] - estimate["value"]]],
                    fmt="o", color=color, capsize=4)
    axis.set_xticks(range(len(models)), [label for label, _, _ in models])
    axis.set_xlim(-0.5, len(models) - 0.5)
    axis.set_title(name, fontsize=9)
    axis.tick_params(labelsize=8)
  figure.tight_layout()
  return figure


def _slice_tables(candidate: Dict, baseline: Optional[Dict]) -> str:
  parts = []
  for slice_name, values in candidate["slices"].items():
    if not values:  # e.g. no eval query of a new user
      continue
    metric_names = [name for name in next(iter(values.values())) if name != "queries"]
    header = "".join(f"<th>{name} candidate</th><th>{name} baseline</th>"
                     for name in metric_names)
    rows = [f"<tr><th>{slice_name}</th><th>queries</th>{header}</tr>"]
    for value, scores in values.items():
      other = (baseline["slices"].get(slice_name, {}).get(value) if baseline else None) or {}
      cells = "".join(f"<td>{scores[name]:.4f}</td><td>{_number(other.get(name))}</td>"
                      for name in metric_names)
      rows.append(f"<tr><td>{html.escape(value)}</td><td>{scores['queries']}</td>{cells}</tr>")
    parts.append(f"<table>{''.join(rows)}</table>")
  return "".join(parts)


def _image(figure) -> str:
  """The figure as an inline PNG <img>; the figure is closed, so pyplot keeps no state."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=90)
  pyplot.close(figure)
  encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
  return f"<img alt=\"chart\" src=\"data:image/png;base64,{encoded}\">"

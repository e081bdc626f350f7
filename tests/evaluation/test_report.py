"""The evaluation report (components/evaluation/report.py): one self-contained HTML page.

The report is what a person reads before trusting a release, often from an artifact store or an
e-mail where nothing else can be fetched, so the page must state the verdict, put candidate and
baseline side by side, and carry its charts inside itself.
"""
import base64
import html
from html import parser
import json
import re
from typing import Dict, List, Optional

import pytest

from components.evaluation import candidate_evaluation
from components.evaluation import model_evaluation
from components.evaluation import release_gate
from components.evaluation import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URI = "data:image/png;base64,"
# The metrics of the shipped gate (schemas/gate/gate.yaml) a run without the simulator measures,
# plus two ungated ones the evaluator also writes.
CANDIDATE_METRICS = {"recall@10": 0.2512, "ndcg@10": 0.1304, "coverage@10": 0.4210,
                     "category_diversity@10": 0.6120, "exposure_gini@10": 0.5530,
                     "ope_ctr": 0.1187, "ope_revenue_per_impression": 0.9100,
                     "recall@5": 0.1633, "novelty@10": 7.2140}
# The most-popular ranking has the list-based metrics only.
POPULARITY_METRICS = {"recall@10": 0.1100, "ndcg@10": 0.0600, "coverage@10": 0.0200,
                      "category_diversity@10": 0.4000, "exposure_gini@10": 0.9900,
                      "recall@5": 0.0700, "novelty@10": 5.1000}
# The candidate's own retrieve signature: a little more accurate, a little lower off-policy CTR
# and revenue.
RETRIEVAL_STAGE_METRICS = {"recall@10": 0.2530, "ndcg@10": 0.1311, "coverage@10": 0.4010,
                           "category_diversity@10": 0.6080, "exposure_gini@10": 0.5610,
                           "ope_ctr": 0.1150, "ope_revenue_per_impression": 0.8800,
                           "recall@5": 0.1650, "novelty@10": 7.1990}
BASELINE_METRICS = {"recall@10": 0.2400, "ndcg@10": 0.1250, "coverage@10": 0.4000,
                    "category_diversity@10": 0.6000, "exposure_gini@10": 0.5600,
                    "ope_ctr": 0.1100, "ope_revenue_per_impression": 0.8500,
                    "recall@5": 0.1580, "novelty@10": 7.1000}


def _estimate(value: float, half_width: float, sessions: int) -> Dict:
  return {"value": value, "low": value - half_width, "high": value + half_width,
          "standard_error": half_width / 1.96, "n_sessions": sessions}


def _model_report(metrics: Dict[str, float], off_policy: bool = True,
                  shift: float = 0.0) -> model_evaluation.ModelReport:
  """A ModelReport shaped as model_evaluation.evaluate returns it."""
  estimates = {}
  if off_policy:
    estimates = {"ope_ctr": _estimate(metrics["ope_ctr"], 0.0150, 812),
                 "ope_ctr_ips": _estimate(0.1210 + shift, 0.0310, 812),
                 "ope_purchase_rate": _estimate(0.0240 + shift, 0.0060, 812),
                 "ope_revenue_per_impression": _estimate(
                     metrics["ope_revenue_per_impression"], 0.1000, 812)}
  else:
    metrics = {name: value for name, value in metrics.items() if not name.startswith("ope_")}
  return model_evaluation.ModelReport(
      queries=640, repeat_queries=37, metrics=dict(metrics),
      slices={"user": {"new": {"recall@10": 0.1800 + shift, "ndcg@10": 0.0900, "queries": 140},
                       "returning": {"recall@10": 0.2710 + shift, "ndcg@10": 0.1410,
                                     "queries": 500}},
              "item_category": {"books": {"recall@10": 0.3020 + shift, "ndcg@10": 0.1600,
                                          "queries": 320},
                                "toys & games": {"recall@10": 0.2004 + shift,
                                                 "ndcg@10": 0.1008, "queries": 320}}},
      off_policy=estimates)


def _record(candidate_metrics: Optional[Dict[str, float]] = None,
            with_baseline: bool = True, off_policy: bool = True,
            past_models: Optional[List[Dict]] = None,
            retrieval_stage_metrics: Optional[Dict[str, float]] = None) -> Dict:
  """evaluation.json as candidate_evaluation.write leaves it, judged by the shipped gate."""
  gate = release_gate.GateConfig.load()
  candidate = _model_report(candidate_metrics or CANDIDATE_METRICS, off_policy)
  baseline = (_model_report(BASELINE_METRICS, off_policy, shift=-0.01) if with_baseline
              else None)
  popularity = _model_report(POPULARITY_METRICS, off_policy=False)
  retrieval_stage = _model_report(retrieval_stage_metrics or RETRIEVAL_STAGE_METRICS, off_policy)
  verdict = release_gate.judge(gate, candidate.metrics, baseline and baseline.metrics,
                               popularity.metrics, retrieval_stage.metrics)
  result = candidate_evaluation.EvaluationResult(
      candidate=candidate, baseline=baseline, verdict=verdict, gate=gate, popularity=popularity,
      retrieval_stage=retrieval_stage, past_models=past_models or [])
  return json.loads(json.dumps(result.to_dict(), sort_keys=True))


class _Page(parser.HTMLParser):
  """The page's tables (rows of cell texts), <img> sources and paragraphs by class."""

  def __init__(self, page: str):
    super().__init__(convert_charrefs=True)
    self.tables: List[List[List[str]]] = []
    self.images: List[str] = []
    self.row_classes: List[Optional[str]] = []
    self.paragraphs: List[tuple] = []
    self._cell: Optional[List[str]] = None
    self._paragraph: Optional[List] = None
    self.feed(page)
    self.close()

  def handle_starttag(self, tag, attrs):
    attributes = dict(attrs)
    if tag == "table":
      self.tables.append([])
    elif tag == "tr":
      self.tables[-1].append([])
      self.row_classes.append(attributes.get("class"))
    elif tag in ("td", "th"):
      self._cell = []
    elif tag == "img":
      self.images.append(attributes["src"])
    elif tag == "p":
      self._paragraph = [attributes.get("class"), []]

  def handle_endtag(self, tag):
    if tag in ("td", "th"):
      self.tables[-1][-1].append("".join(self._cell))
      self._cell = None
    elif tag == "p" and self._paragraph is not None:
      self.paragraphs.append((self._paragraph[0], "".join(self._paragraph[1])))
      self._paragraph = None

  def handle_data(self, data):
    if self._cell is not None:
      self._cell.append(data)
    if self._paragraph is not None:
      self._paragraph[1].append(data)

  def table_starting_with(self, header: str) -> Dict[str, List[str]]:
    """The table whose first header cell is `header`, as first cell -> the row's other cells."""
    (table,) = [table for table in self.tables if table and table[0][0] == header]
    return {row[0]: row[1:] for row in table}


def _by_column(table: Dict[str, List[str]], header: str) -> Dict[str, Dict[str, str]]:
  """A slice table as value -> column header -> cell (the metric columns' order is the record's)."""
  return {value: dict(zip(table[header], cells)) for value, cells in table.items()
          if value != header}


@pytest.fixture(scope="module")
def blessed_record() -> Dict:
  return _record()


@pytest.fixture(scope="module")
def blessed_page(blessed_record) -> str:
  return report.render(blessed_record)


def test_a_blessed_verdict_is_stated_in_the_blessed_style(blessed_record, blessed_page):
  assert blessed_record["verdict"]["blessed"], blessed_record["verdict"]["reason"]
  verdict = [text for css, text in _Page(blessed_page).paragraphs if css == "blessed"]
  assert verdict == [blessed_record["verdict"]["reason"]]
  assert verdict[0].startswith(
      "blessed: floors, popularity margins, regressions and Pareto rule hold")
  assert "class=\"refused\"" not in blessed_page


def test_a_refused_verdict_shows_the_gates_reason_and_marks_the_failed_metric():
  record = _record(dict(CANDIDATE_METRICS, **{"recall@10": 0.0300}))
  assert not record["verdict"]["blessed"]
  page = _Page(report.render(record))
  verdict = [text for css, text in page.paragraphs if css == "refused"]
  assert verdict == [record["verdict"]["reason"]]
  assert ("recall@10 = 0.0300 does not beat the most-popular ranking's 0.1100 by 5% of it: "
          "short of 0.1155 by 0.0855") in verdict[0]
  assert not [text for css, text in page.paragraphs if css == "blessed"]
  metric_rows = [row[0] for row in page.tables[0]]
  failed = {name for name, css in zip(metric_rows, page.row_classes) if css == "fail"}
  assert "recall@10" in failed and "ndcg@10" not in failed


def test_the_metric_table_puts_candidate_and_baseline_side_by_side(blessed_record,
                                                                   blessed_page):
  table = _Page(blessed_page).table_starting_with("metric")
  assert table["metric"][:4] == ["candidate", "baseline", "change", "most popular"]
  # The candidate's retrieval stage beside popularity, the gate's settings after them.
  assert table["metric"][4:] == ["retrieval stage", "floor", "over popularity",
                                 "max regression", "Pareto", "max rerank loss", "weight"]
  assert set(table) - {"metric"} == set(CANDIDATE_METRICS)
  for name, value in CANDIDATE_METRICS.items():
    reference = BASELINE_METRICS[name]
    assert table[name][:3] == [f"{value:.4f}", f"{reference:.4f}", f"{value - reference:+.4f}"]
    assert table[name][3] == (f"{POPULARITY_METRICS[name]:.4f}" if name in POPULARITY_METRICS
                              else "")
    assert table[name][4] == f"{RETRIEVAL_STAGE_METRICS[name]:.4f}"
  # The gate's settings of a gated metric; an ungated one has none.
  assert table["recall@10"][5:] == ["", "0.05 relative", "0.1 relative", "yes", "", "1"]
  assert table["exposure_gini@10"][5:] == ["", "", "0.05 absolute", "", "", "0.25"]
  assert table["ope_ctr"][5:] == ["", "", "", "", "", "1"]
  assert table["ope_revenue_per_impression"][5:] == ["", "", "", "", "0.1 relative", "0"]
  assert table["novelty@10"][5:] == ["", "", "", "", "", ""]


def test_a_reranker_behind_its_retrieval_stage_is_refused_and_its_row_marked():
  record = _record(retrieval_stage_metrics=dict(RETRIEVAL_STAGE_METRICS,
                                                 ope_revenue_per_impression=1.1000))
  page = _Page(report.render(record))
  verdict = [text for css, text in page.paragraphs if css == "refused"]
  assert verdict == [record["verdict"]["reason"]]
  assert ("ope_revenue_per_impression = 0.9100 after reranking falls behind its retrieval "
          "stage's 1.1000 by 0.1900, more than the allowed 10% of it") in verdict[0]
  metric_rows = [row[0] for row in page.tables[0]]
  failed = {name for name, css in zip(metric_rows, page.row_classes) if css == "fail"}
  assert failed == {"ope_revenue_per_impression"}
  assert page.table_starting_with("metric")["ope_revenue_per_impression"][4] == "1.1000"


def test_metrics_the_gate_configures_but_the_run_did_not_measure_are_listed(blessed_page):
  note = [text for _, text in _Page(blessed_page).paragraphs
          if text.startswith("Configured but not measured")]
  assert note == ["Configured but not measured on these data: simulator_ctr, "
                  "simulator_clicks_per_user"]


def test_a_first_run_without_a_baseline_renders_with_empty_baseline_cells():
  record = _record(with_baseline=False)
  assert record["baseline"] is None
  page = _Page(report.render(record))
  verdict = [text for css, text in page.paragraphs if css == "blessed"]
  assert verdict and verdict[0].startswith(
      "blessed: floors and popularity margins (first model: no baseline) hold")
  metrics = page.table_starting_with("metric")
  for name, value in CANDIDATE_METRICS.items():
    assert metrics[name][:3] == [f"{value:.4f}", "", ""]
  estimates = page.table_starting_with("estimate")
  assert estimates["ope_ctr"][1] == ""
  users = _by_column(page.table_starting_with("user"), "user")
  assert users["returning"] == {"queries": "500", "recall@10 candidate": "0.2710",
                                "recall@10 baseline": "", "ndcg@10 candidate": "0.1410",
                                "ndcg@10 baseline": ""}


def test_charts_are_embedded_as_png_data_uris(blessed_page):
  images = _Page(blessed_page).images
  # Gated bars, the three pairs of the three Pareto metrics, the off-policy intervals.
  assert len(images) == 5
  for source in images:
    assert source.startswith(DATA_URI)
    assert base64.b64decode(source[len(DATA_URI):], validate=True).startswith(PNG_SIGNATURE)


def test_the_page_references_no_external_resource(blessed_page):
  assert blessed_page.startswith("<!DOCTYPE html>")
  assert not re.search(r"\b(?:href|srcset)\s*=", blessed_page)
  assert not re.search(r"<(?:link|script|iframe|object|embed)\b", blessed_page)
  sources = re.findall(r"\bsrc\s*=\s*[\"']([^\"']*)[\"']", blessed_page)
  assert sources and all(source.startswith(DATA_URI) for source in sources)
  without_images = re.sub(r"\bsrc=\"data:image/png;base64,[A-Za-z0-9+/=]*\"", "", blessed_page)
  assert not re.search(r"url\(|@import|[a-z]+://|//[a-z0-9]", without_images, re.I)


def test_the_pareto_charts_appear_only_with_two_measured_pareto_metrics(blessed_page):
  assert "<h2>Pareto front</h2>" in blessed_page
  record = _record()
  gate = release_gate.GateConfig.from_yaml(
      "metrics:\n  recall@10: {floor: 0.05, pareto: true}\n  ndcg@10: {floor: 0.02}\n")
  record["gate"] = gate.to_yaml()
  page = report.render(record)
  assert "<h2>Pareto front</h2>" not in page
  assert len(_Page(page).images) == 2  # the gated bars and the off-policy intervals


def test_off_policy_estimates_show_value_interval_and_sessions(blessed_record, blessed_page):
  estimates = _Page(blessed_page).table_starting_with("estimate")
  assert estimates["estimate"] == ["candidate", "baseline", "sessions"]
  assert set(estimates) - {"estimate"} == {"ope_ctr", "ope_ctr_ips", "ope_purchase_rate",
                                           "ope_revenue_per_impression"}
  candidate = blessed_record["candidate"]["off_policy"]["ope_ctr"]
  baseline = blessed_record["baseline"]["off_policy"]["ope_ctr"]
  assert estimates["ope_ctr"] == [
      f"{candidate['value']:.4f} [{candidate['low']:.4f}, {candidate['high']:.4f}]",
      f"{baseline['value']:.4f} [{baseline['low']:.4f}, {baseline['high']:.4f}]", "812"]
  assert estimates["ope_ctr"][0] == "0.1187 [0.1037, 0.1337]"
  assert "<h2>Off-policy estimates (95% intervals)</h2>" in blessed_page


def test_without_logged_propensities_the_page_says_there_are_no_estimates():
  page = report.render(_record(off_policy=False))
  assert "None: the eval data carry no logging propensities." in page
  assert not [table for table in _Page(page).tables if table[0][0] == "estimate"]
  assert len(_Page(page).images) == 4  # no off-policy chart


def test_slices_show_each_value_for_candidate_and_baseline(blessed_page):
  page = _Page(blessed_page)
  users = _by_column(page.table_starting_with("user"), "user")
  assert users["new"] == {"queries": "140", "recall@10 candidate": "0.1800",
                          "recall@10 baseline": "0.1700", "ndcg@10 candidate": "0.0900",
                          "ndcg@10 baseline": "0.0900"}
  assert users["returning"] == {"queries": "500", "recall@10 candidate": "0.2710",
                                "recall@10 baseline": "0.2610", "ndcg@10 candidate": "0.1410",
                                "ndcg@10 baseline": "0.1410"}
  categories = page.table_starting_with("item_category")
  assert set(categories) == {"item_category", "books", "toys & games"}
  assert "<td>toys &amp; games</td>" in blessed_page


def test_html_special_characters_in_the_reason_are_escaped():
  record = _record()
  reason = "refused: <script>alert('x')</script> & \"recall@10\" < floor"
  record["verdict"] = dict(record["verdict"], blessed=False, reason=reason)
  page = report.render(record)
  assert "<script>" not in page
  assert html.escape(reason) in page
  assert [text for css, text in _Page(page).paragraphs if css == "refused"] == [reason]


def test_html_special_characters_in_unmeasured_metric_names_are_escaped():
  record = _record()
  record["verdict"] = dict(record["verdict"], not_measured=["<b>simulator_ctr</b>"])
  page = report.render(record)
  assert "<b>simulator_ctr</b>" not in page
  assert "&lt;b&gt;simulator_ctr&lt;/b&gt;" in page


def test_a_gate_none_of_whose_metrics_was_measured_renders_a_sentence_instead_of_bars():
  record = _record()
  # A gate of simulator metrics on a user's own data, which the simulator does not know.
  record["gate"] = "metrics:\n  simulator_ctr:\n    direction: higher\n    floor: 0.1\n"
  assert "simulator_ctr" not in record["candidate"]["metrics"]
  record["candidate"]["slices"]["user"] = {}
  page = report.render(record)
  assert "None of the gated metrics was measured on these data." in page
  assert _Page(page).tables  # the rest of the page is still there


def _search(shift: float) -> Dict:
  """A trade-off search's record over three weightings, the hand-set one first."""
  points = [(1.0, 0.0), (1.2 + shift, -0.1), (0.8, 0.2 + shift)]
  return {"metrics": ["simulator_revenue_per_user", "simulator_satisfaction", "ndcg@10"],
          "trials": [{"number": number, "weights": {"click": 1.0},
                      "metrics": {"simulator_revenue_per_user": revenue,
                                  "simulator_satisfaction": satisfaction, "ndcg@10": 0.3}}
                     for number, (revenue, satisfaction) in enumerate(points)],
          "front": [0, 1, 2], "chosen": 2}


def test_searched_trade_offs_plot_both_fronts_and_the_hypervolume_over_runs(blessed_page):
  assert "<h2>Trade-offs</h2>" not in blessed_page
  record = _record()
  record["tradeoffs"] = {"candidate": _search(0.1), "baseline": _search(0.0),
                         "hypervolumes": {"candidate": 0.31, "baseline": 0.25}}
  record["past_models"] = [{"name": "evaluation 3", "metrics": {}, "hypervolume": 0.2},
                           {"name": "evaluation 5", "metrics": {}, "hypervolume": None}]
  page = report.render(record)
  section = page[page.index("<h2>Trade-offs</h2>"):]
  assert "hypervolume 0.31 for the candidate against 0.25 for the baseline" in section
  # Three metric pairs (revenue against satisfaction first) and the hypervolume over runs.
  assert len(_Page(page).images) == len(_Page(blessed_page).images) + 4

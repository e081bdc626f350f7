"""The item tower's title encoder: bag of words against self-attention, judged on validation data.

Run: .venv/bin/python bench/bench_item_tower.py [--data ../shared/data/movielens-latest-small]
         [--out bench/results/item_tower.json]

For the built-in dataset and, when present, ml-latest-small (ratings with movies.csv's titles),
`recsys run` trains the whole pipeline once per title encoder (`--set model.title_encoder=...`,
components/models/config.py, TITLE_ENCODERS) in a fresh home, under the default gate. Each is
judged on the pipeline's own eval split, which SessionBuilder carves out of the data it is given
(each user's latest engagements): recall@10 and nDCG@10 of the candidate model, as the
ModelEvaluator measures them. No test split is looked at: this is the validation the default
is chosen by. Attention is adopted where it beats the bag of words on nDCG@10 on every dataset.
Results go to bench/results/item_tower.json.
"""
import argparse
import json
import pathlib
import re
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from click.testing import CliRunner  # pylint: disable=g-import-not-at-top

from components.models.config import ATTENTION_TITLE  # pylint: disable=g-import-not-at-top
from components.models.config import BAG_OF_WORDS_TITLE  # pylint: disable=g-import-not-at-top
from components.models.config import TITLE_ENCODERS  # pylint: disable=g-import-not-at-top
from pipeline import cli  # pylint: disable=g-import-not-at-top

_METRICS = ("recall@10", "ndcg@10")


def _run(home: pathlib.Path, encoder: str, data_arguments) -> dict:
  """One pipeline run with `encoder`; its eval split's figures, verdict and seconds."""
  start = time.perf_counter()
  result = CliRunner().invoke(cli.main, [
      "run", "--home", str(home), *data_arguments, "--set", f"model.title_encoder={encoder}"],
      catch_exceptions=False)
  if result.exit_code:
    raise SystemExit(result.output)
  (evaluation,) = home.glob("pipelines/recsys/ModelEvaluator/evaluation/*/evaluation.json")
  candidate = json.loads(evaluation.read_text())["candidate"]
  (verdict,) = [line for line in result.output.splitlines() if line.startswith("Model ")]
  return {"eval_split": {metric: round(candidate["metrics"][metric], 4) for metric in _METRICS},
          "eval_queries": candidate["queries"], "verdict": verdict,
          "pipeline_seconds": round(time.perf_counter() - start, 1),
          "trainer_seconds": float(re.search(r"Trainer +COMPLETE +([\d.]+) s",
                                             result.output).group(1))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--data", type=pathlib.Path,
                      default=REPO_ROOT.parent / "shared" / "data" / "movielens-latest-small")
  parser.add_argument("--out", type=pathlib.Path,
                      default=REPO_ROOT / "bench" / "results" / "item_tower.json")
  args = parser.parse_args()
  datasets = {"built-in": ()}
  if (args.data / "ratings.csv").exists():
    datasets["ml-latest-small"] = ("--interactions", str(args.data / "ratings.csv"),
                                   "--items", str(args.data / "movies.csv"),
                                   "--format", "movielens")
  else:
    print(f"{args.data} not found: the built-in dataset only")
  results = {}
  with tempfile.TemporaryDirectory() as work:
    for dataset, data_arguments in datasets.items():
      results[dataset] = {}
      for encoder in TITLE_ENCODERS:
        home = pathlib.Path(work) / f"{dataset}-{encoder}"
        results[dataset][encoder] = _run(home, encoder, data_arguments)
        print(dataset, encoder, results[dataset][encoder]["eval_split"], flush=True)
  gains = {dataset: round(runs[ATTENTION_TITLE]["eval_split"]["ndcg@10"]
                          - runs[BAG_OF_WORDS_TITLE]["eval_split"]["ndcg@10"], 4)
           for dataset, runs in results.items()}
  report = {"datasets": results, "attention_minus_bag_ndcg@10": gains,
            "adopt_attention": all(gain > 0 for gain in gains.values())}
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()

"""Ranking quality on MovieLens ml-latest-small under the Microsoft Recommenders protocol.

Run: .venv/bin/python bench/bench_movielens.py [--data ../shared/data/movielens-latest-small]

Protocol: a random 75/25 split stratified per item (every item keeps 75% of its ratings in
training; numpy seed 42); every test rating is relevant; the whole catalog is ranked with the
items a user rated in training removed; k = 10; precision, recall, nDCG and MAP at 10
(components/ranking_metrics.py). The model is trained by the real pipeline (`recsys run`) on the
training part only (which holds out its own latest 20% by time for the recall gate); a popularity
ranking under the same protocol is reported for scale. Results go to bench/results/movielens.json.
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import pandas as pd  # pylint: disable=g-import-not-at-top
from click.testing import CliRunner

from components import features
from components import ranking_metrics
from components.data import ingest
from pipeline import cli
from serving import batch

K = 10
SEED = 42


def _popularity(train: pd.DataFrame, users, seen, k: int) -> pd.DataFrame:
  ranked = train[features.ITEM_ID].value_counts().index.tolist()
  rows = []
  for user in users:
    unseen = [item for item in ranked if item not in seen.get(user, ())][:k]
    rows += [(user, rank, item) for rank, item in enumerate(unseen, start=1)]
  return pd.DataFrame(rows, columns=["user_id", "rank", "item_id"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--data", type=pathlib.Path,
                      default=REPO_ROOT.parent / "shared" / "data" / "movielens-latest-small")
  parser.add_argument("--out", type=pathlib.Path,
                      default=REPO_ROOT / "bench" / "results" / "movielens.json")
  args = parser.parse_args()

  ratings = pd.read_csv(args.data / "ratings.csv", dtype={"userId": str, "movieId": str})
  train, test = ranking_metrics.stratified_split(ratings, 0.75, SEED, by="movieId")
  with tempfile.TemporaryDirectory() as work:
    work = pathlib.Path(work)
    train.to_csv(work / "ratings.csv", index=False)
    start = time.perf_counter()
    result = CliRunner().invoke(cli.main, [
        "run", "--interactions", str(work / "ratings.csv"), "--items",
        str(args.data / "movies.csv"), "--format", "movielens", "--home", str(work / "home"),
        "--recall-floor", "0"], catch_exceptions=False)
    if result.exit_code:
      raise SystemExit(result.output)
    train_seconds = time.perf_counter() - start
    (model_dir,) = (work / "home" / "serving" / "recommender").iterdir()
    train_events = ingest.load_interactions(work / "ratings.csv", fmt="movielens")
    seen = batch.engaged_items(train_events)
    relevant = test.rename(columns={"userId": "user_id", "movieId": "item_id"})
    users = sorted(relevant["user_id"].unique())
    two_tower = batch.recommend(model_dir, users, seen, K)
  popularity = _popularity(train_events, users, seen, K)
  report = {
      "protocol": "ml-latest-small, 75/25 split stratified per item (seed 42), full ranking, "
                  "training items removed, k=10",
      "pipeline_seconds": round(train_seconds, 1),
      "two_tower": ranking_metrics.ranking_metrics(relevant, two_tower, K),
      "popularity": ranking_metrics.ranking_metrics(relevant, popularity, K),
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()

"""bench/bench_movielens.py: its EASE reference ranking."""
import importlib.util
import pathlib

import pandas as pd

from schemas import contract

_BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_movielens.py"
_spec = importlib.util.spec_from_file_location("bench_movielens", _BENCH)
bench_movielens = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_movielens)


def test_ease_recommends_what_similar_users_liked_not_what_is_popular_or_seen():
  # u1..u3 like x and y; u4 likes x only. w is the most popular item, liked by u5..u8 who like
  # nothing else. Popularity would give u4 w first; EASE gives y, which goes with x.
  pairs = [(user, item) for user in ("u1", "u2", "u3") for item in ("x", "y")]
  pairs += [("u4", "x")] + [(f"u{n}", "w") for n in range(5, 9)]
  train = pd.DataFrame(pairs, columns=[contract.USER_ID, contract.ITEM_ID])
  recs = bench_movielens._ease(train, ["u4"], {"u4": ["x"]}, k=2)  # pylint: disable=protected-access
  assert recs[["user_id", "rank", "item_id"]].to_dict("records") == [{"user_id": "u4", "rank": 1, "item_id": "y"},
                                     {"user_id": "u4", "rank": 2, "item_id": "w"}]
  ranked_by_popularity = bench_movielens._popularity(  # pylint: disable=protected-access
      train, ["u4"], {"u4": ["x"]}, k=1)
  assert ranked_by_popularity["item_id"].tolist() == ["w"]

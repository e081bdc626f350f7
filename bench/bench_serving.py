"""Serving latency and throughput over gRPC against the in-process SavedModel call and floors.

Run: .venv/bin/python bench/bench_serving.py [--quick] [--catalogs 10000 1000000] [--seconds 8]
         [--out bench/results/serving.json]

For each catalog size a SavedModel with the serving graph's shape of work is exported: raw ids in;
user embedding by id hash, mean embedding of the history items (looked up by id, by the query
tower's own two_tower.bag_mean), scores against every catalog item and the top 200 candidates by
the serving graph's own retrieval (components/models/ranker.Catalog), an MLP over (query,
candidate) pairs standing in for the DQN head, top 10 out with scores and propensities, and warmup
requests as the Trainer writes them. The weights are random: latency does not depend on them. The
model is pushed to a temporary serving root and served by the local server (`python -m
serving.server`) in its own process, as deployed; the load generator sends TF Serving Predict
requests from client threads in this process.

Measured per (catalog, batch), all in the same run, one after the other, on the same machine:
  * in process: the loaded signature called in a loop (one caller), as a TF2 program calls a
    SavedModel (`tf.saved_model.load(...).signatures`), and the same with the server's own
    runtime (serving/registry.Servable: the SignatureDef run by a session callable);
  * the bare floor (batch 1): one matmul of a query against the [dim, catalog] embeddings and
    `tf.math.top_k` of the 200 best, the least work any retrieval over the catalog does;
  * gRPC without a model: the same requests to a Python gRPC server in this process that answers
    at once with an empty response, at concurrency 1: what the transport alone costs;
  * over gRPC at concurrency 1, 8 and 32: p50/p99 latency per request and requests per second;
  * version swaps under load (smallest catalog, batch 1): requests at concurrency
    SWAP_CONCURRENCY while new versions are pushed into the serving root, one after the other,
    and the server loads, warms and swaps each in, against the same load in steady state. The
    requests of SWAPS swaps are pooled: one swap window holds a few hundred requests, too few
    for a p99 that two runs agree on.
Goals, each written under "goals" as its ratio, the ratio's bound and whether it is met:
(a) gRPC p50 <= 1.2 x (empty round trip p50 + in-process p50), 10k items, batch 1;
(b) in-process p50 <= 1.5 x the bare floor at 1M items; (c) gRPC p99 <= 5 ms, 10k items,
batch 1; (d) p99 during a swap <= 2 x the steady p99, with no failed request.
`--quick` (2 s per measurement, batch 1, concurrency 1) still measures and writes all four.
"""
import argparse
from concurrent import futures
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Before TensorFlow loads: Keras 2 and TensorFlow's log level (components/__init__.py).
import components  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

import grpc  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from components.models import queries
from components.models import ranker
from components.models import two_tower
from components.models import warmup
from components.models.config import ModelConfig
from schemas import contract
from serving import client as client_lib
from serving import push
from serving import registry as registry_lib
from serving import server as server_lib
from serving import tensor_protos

BATCHES = (1, 64)
CONCURRENCIES = (1, 8, 32)
EMBEDDING_DIM = ModelConfig.embedding_dim
CANDIDATES = ModelConfig().ranker.serve_candidates
TOP_K = 10
USER_BUCKETS = 100_000
# Clients sending at once while a version is swapped in: as many as there are cores.
SWAP_CONCURRENCY = 2
# How often the swap's server polls its serving root (the default is 2 s; shorter, shorter run).
SWAP_POLL_SECONDS = 0.5
# Swaps whose requests are pooled (README "Latency"); --quick makes one.
SWAPS = 3
# Goals of issue 24 item 6 (README "Latency"): each a ratio and its bound.
GRPC_OVERHEAD_GOAL = 1.2  # (a) gRPC p50 / (empty round trip p50 + in-process p50)
FLOOR_GOAL = 1.5  # (b) in-process p50 / bare matmul + top_k p50, largest catalog
P99_GOAL_MS = 5.0  # (c) gRPC p99 over 5 ms <= 1, smallest catalog, batch 1, concurrency 1
SWAP_GOAL = 2.0  # (d) p99 during a swap / steady p99, and no failed request


class SyntheticRecommender(tf.Module):
  """The serving contract over `catalog_size` items, with the serving graph's costs."""

  def __init__(self, catalog_size: int, vocabulary_file: pathlib.Path, seed: int = 0):
    super().__init__()
    rng = np.random.default_rng(seed)
    item_ids = [f"i{index}" for index in range(catalog_size)]
    # As Transform's vocabularies: an asset file the table reads when the model loads.
    vocabulary_file.write_text("\n".join(item_ids) + "\n")
    self.item_index = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        str(vocabulary_file), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
        tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)
    # The serving graph's retrieval itself, held as export.RecommenderModule holds it.
    self.item_ids = tf.Variable(np.array(item_ids, dtype=object), trainable=False,
                                dtype=tf.string)
    self.catalog = ranker.Catalog(
        rng.normal(size=(catalog_size, EMBEDDING_DIM)).astype(np.float32),
        np.zeros(catalog_size, np.int64), np.zeros(catalog_size, np.int64), as_variables=True)
    self.users = tf.Variable(rng.normal(size=(USER_BUCKETS, EMBEDDING_DIM)).astype(np.float32))
    self.hidden = tf.Variable(rng.normal(size=(2 * EMBEDDING_DIM, 64)).astype(np.float32) / 8)
    self.out = tf.Variable(rng.normal(size=(64, 1)).astype(np.float32) / 8)

  @tf.function(input_signature=queries.INPUT_SPECS)
  def serve(self, user_id, history, timestamp):
    del timestamp  # the contract's input; an hour embedding costs nothing next to the rest
    users = tf.gather(self.users, tf.strings.to_hash_bucket_fast(user_id, USER_BUCKETS))
    # Unknown ids look up as -1, the Transform's PADDING, which the mean skips as the tower does.
    history_mean = two_tower.bag_mean(self.catalog.embeddings, self.item_index.lookup(history))
    query = users + history_mean
    _, candidates = self.catalog.top_candidates(query, CANDIDATES)
    pairs = tf.concat([tf.repeat(query[:, tf.newaxis], CANDIDATES, axis=1),
                       self.catalog.actions(candidates)["embedding"]], axis=2)
    q_values = tf.squeeze(tf.nn.relu(pairs @ self.hidden) @ self.out, -1)
    scores, best = tf.math.top_k(q_values, k=TOP_K)
    return {contract.ITEM_IDS: tf.gather(self.item_ids, tf.gather(candidates, best, batch_dims=1)),
            contract.SCORES: scores,
            contract.PROPENSITIES: tf.ones_like(scores)}


def export(catalog_size: int, path: pathlib.Path) -> None:
  module = SyntheticRecommender(catalog_size, path.with_name(f"{path.name}-items.txt"))
  tf.saved_model.save(module, str(path), signatures={
      contract.SERVING_SIGNATURE: module.serve.get_concrete_function()})
  # As the Trainer does: the server replays these before it serves a version.
  warmup.write(path, warmup.representative_requests(["u1"], ["i0", "i1"]))


def requests_for(batch: int, catalog_size: int, count: int, seed: int) -> list:
  rng = np.random.default_rng(seed)
  return [queries.predict_request(
      [f"u{user}" for user in rng.integers(0, 10 * USER_BUCKETS, size=batch)],
      [[f"i{item}" for item in rng.integers(0, catalog_size, size=contract.HISTORY_LENGTH)]
       for _ in range(batch)], history_width=contract.HISTORY_LENGTH) for _ in range(count)]


def summary(latencies_ms: List[float], seconds: float) -> Dict[str, float]:
  p50, p99 = np.percentile(latencies_ms, [50, 99])
  return {"requests": len(latencies_ms), "p50_ms": round(float(p50), 3),
          "p99_ms": round(float(p99), 3), "requests_per_second": round(len(latencies_ms) / seconds,
                                                                       1)}


def _timed_loop(call, arguments: list, seconds: float) -> Dict[str, float]:
  """`call(arguments[i])` in a loop, one caller, for `seconds`, after three warm calls."""
  for warm in arguments[:3]:
    call(warm)
  latencies, start = [], time.perf_counter()
  while time.perf_counter() - start < seconds:
    began = time.perf_counter()
    call(arguments[len(latencies) % len(arguments)])
    latencies.append((time.perf_counter() - began) * 1000)
  return summary(latencies, time.perf_counter() - start)


def in_process(model_dir: pathlib.Path, requests: list, seconds: float) -> Dict[str, float]:
  serve = tf.saved_model.load(str(model_dir)).signatures[contract.SERVING_SIGNATURE]
  inputs = [{key: tf.make_ndarray(tensor) for key, tensor in request.inputs.items()}
            for request in requests]
  return _timed_loop(lambda call: serve(**call)[contract.ITEM_IDS].numpy(), inputs, seconds)


def in_process_server_runtime(model_dir: pathlib.Path, requests: list,
                              seconds: float) -> Dict[str, float]:
  """The signature as the server runs it: arrays in, session callable, arrays out."""
  servable = registry_lib.Servable.load(contract.DEFAULT_MODEL_NAME, 1, model_dir)
  inputs = [{key: tensor_protos.to_ndarray(tensor) for key, tensor in request.inputs.items()}
            for request in requests]
  return _timed_loop(lambda call: servable.run(contract.SERVING_SIGNATURE, call), inputs,
                     seconds)


def bare_floor(catalog_size: int, seconds: float) -> Dict[str, float]:
  """One query's matmul against [dim, catalog] float32 embeddings and its top CANDIDATES."""
  rng = np.random.default_rng(1)
  embeddings_t = tf.constant(rng.normal(size=(EMBEDDING_DIM, catalog_size)).astype(np.float32))
  score = tf.function(lambda query: tf.math.top_k(tf.matmul(query, embeddings_t), k=CANDIDATES))
  query_pool = [tf.constant(rng.normal(size=(1, EMBEDDING_DIM)).astype(np.float32))
                for _ in range(16)]
  return _timed_loop(lambda query: score(query)[1].numpy(), query_pool, seconds)


def _load(target: str, requests: list, concurrency: int, stop: threading.Event,
          ) -> List[Tuple[float, Optional[float]]]:
  """Predicts at `concurrency` until `stop`: (time sent, latency in ms or None if it failed)."""
  records: List[Tuple[float, Optional[float]]] = []
  lock = threading.Lock()

  def worker(offset: int) -> None:
    with grpc.insecure_channel(target) as channel:
      predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
      sent = offset
      while not stop.is_set():
        began = time.perf_counter()
        try:
          predict(requests[sent % len(requests)], timeout=60)
          latency = (time.perf_counter() - began) * 1000
        except grpc.RpcError:
          latency = None
        with lock:
          records.append((began, latency))
        sent += 1

  threads = [threading.Thread(target=worker, args=(index,)) for index in range(concurrency)]
  for thread in threads:
    thread.start()
  stop.wait()
  for thread in threads:
    thread.join()
  return records


def _record_summary(records: List[Tuple[float, Optional[float]]],
                    seconds: float) -> Dict[str, float]:
  result = summary([latency for _, latency in records if latency is not None], seconds)
  result["errors"] = sum(latency is None for _, latency in records)
  return result


def over_grpc(target: str, requests: list, concurrency: int, seconds: float) -> Dict[str, float]:
  stop = threading.Event()
  timer = threading.Timer(seconds, stop.set)
  start = time.perf_counter()
  timer.start()
  records = _load(target, requests, concurrency, stop)
  return _record_summary(records, time.perf_counter() - start)


class _EmptyPredictions(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Answers every Predict at once with an empty response: gRPC's own cost, without a model."""

  def Predict(self, request, context):
    return predict_pb2.PredictResponse()


def grpc_transport(requests: list, seconds: float) -> Dict[str, float]:
  """Round trips of the same requests to a Python gRPC server that does no work."""
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_EmptyPredictions(), server)
  port = server.add_insecure_port("127.0.0.1:0")
  server.start()
  try:
    return over_grpc(f"127.0.0.1:{port}", requests, 1, seconds)
  finally:
    server.stop(grace=None)


def version_swap(model_dir: pathlib.Path, catalog_size: int, seconds: float,
                 work_dir: pathlib.Path, swaps: int) -> Dict:
  """Latency of requests sent while new versions are pushed, loaded, warmed and swapped in,
  one after the other (`swaps` of them, their requests pooled), against the same load in
  steady state just before."""
  serving_root = work_dir / f"swap-{catalog_size}"
  push.push(model_dir, serving_root, contract.DEFAULT_MODEL_NAME, version=1)
  requests = requests_for(1, catalog_size, count=64, seed=1)
  with server_lib.running_process(serving_root, poll_seconds=SWAP_POLL_SECONDS,
                                  stderr=subprocess.DEVNULL) as (target, _):
    with client_lib.RecommenderClient(target) as client:
      client.wait_until_available(timeout=300)
      steady = over_grpc(target, requests, SWAP_CONCURRENCY, seconds)
      stop = threading.Event()
      records: List[Tuple[float, Optional[float]]] = []
      load = threading.Thread(target=lambda: records.extend(
          _load(target, requests, SWAP_CONCURRENCY, stop)))
      load.start()
      windows = []  # (pushed, swapped + SWAP_POLL_SECONDS) per swap
      for version in range(2, swaps + 2):
        time.sleep(1.0)  # the load runs on the served version before the next one lands
        pushed = time.perf_counter()
        push.push(model_dir, serving_root, contract.DEFAULT_MODEL_NAME, version=version)
        while client.model_status().version != version:
          if time.perf_counter() - pushed > 300:
            raise TimeoutError(f"version {version} was not served within 300 s of its push")
          time.sleep(0.05)
        # Requests just after the swap run on the new version: part of the swap's window.
        windows.append((pushed, time.perf_counter() + SWAP_POLL_SECONDS))
        time.sleep(SWAP_POLL_SECONDS)
      stop.set()
      load.join()
  during = [record for record in records
            if any(start <= record[0] <= end for start, end in windows)]
  return {"concurrency": SWAP_CONCURRENCY, "swaps": swaps, "steady": steady,
          "during_swap": _record_summary(during, sum(end - start for start, end in windows)),
          "push_to_served_seconds": [round(end - SWAP_POLL_SECONDS - start, 2)
                                     for start, end in windows]}


def bench_catalog(catalog_size: int, seconds: float, batches, concurrencies,
                  work_dir: pathlib.Path, swaps: int) -> Dict:
  """Every measurement of one catalog size; `swaps` version swaps (0: none)."""
  model_dir = work_dir / f"model-{catalog_size}"
  export(catalog_size, model_dir)
  serving_root = work_dir / f"serving-{catalog_size}"
  push.push(model_dir, serving_root, contract.DEFAULT_MODEL_NAME, version=1)
  results = {"bare_floor_batch_1": bare_floor(catalog_size, seconds)}
  print(json.dumps({"catalog": catalog_size, "bare_floor": results["bare_floor_batch_1"]}),
        flush=True)
  with server_lib.running_process(serving_root, poll_seconds=0,
                                  stderr=subprocess.DEVNULL) as (target, _):
    with client_lib.RecommenderClient(target) as client:
      client.wait_until_available(timeout=300)
    for batch in batches:
      requests = requests_for(batch, catalog_size, count=64, seed=batch)
      floor = in_process(model_dir, requests, seconds)
      server_runtime = in_process_server_runtime(model_dir, requests, seconds)
      transport = grpc_transport(requests, seconds)
      grpc_results = {str(concurrency): over_grpc(target, requests, concurrency, seconds)
                      for concurrency in concurrencies}
      results[str(batch)] = {
          "in_process": floor, "in_process_server_runtime": server_runtime,
          "grpc_without_model": transport, "grpc": grpc_results,
          "p50_ratio_grpc_over_in_process": round(
              grpc_results["1"]["p50_ms"] / floor["p50_ms"], 3)}
      print(json.dumps({"catalog": catalog_size, "batch": batch, **results[str(batch)]}),
            flush=True)
  if swaps:
    results["version_swap_batch_1"] = version_swap(model_dir, catalog_size, seconds, work_dir,
                                                   swaps)
    print(json.dumps({"catalog": catalog_size, **results["version_swap_batch_1"]}), flush=True)
  return results


def _goal(catalog: str, numerator: float, denominator: float, goal: float, **facts) -> Dict:
  ratio = numerator / denominator
  met = ratio <= goal and facts.get("failed_requests", 0) == 0
  return {"catalog": int(catalog), "ratio": round(ratio, 3), "goal": goal, "met": bool(met),
          **facts}


def goals(results: Dict[str, Dict]) -> Dict[str, Dict]:
  """The four goals, from the smallest catalog's batch-1 runs and the largest's floor."""
  small, large = min(results, key=int), max(results, key=int)
  at_small, at_large = results[small]["1"], results[large]["1"]
  grpc_small = at_small["grpc"]["1"]
  swap = results[small]["version_swap_batch_1"]
  floor_ms = results[large]["bare_floor_batch_1"]["p50_ms"]
  return {
      "a_grpc_p50_over_round_trip_plus_in_process_p50": _goal(
          small, grpc_small["p50_ms"],
          at_small["grpc_without_model"]["p50_ms"] + at_small["in_process"]["p50_ms"],
          GRPC_OVERHEAD_GOAL, grpc_p50_ms=grpc_small["p50_ms"],
          round_trip_p50_ms=at_small["grpc_without_model"]["p50_ms"],
          in_process_p50_ms=at_small["in_process"]["p50_ms"],
          # The same ratio against the server's own runtime in process: what the server adds
          # beyond its model call and the round trip.
          ratio_with_server_runtime_in_process=round(grpc_small["p50_ms"] / (
              at_small["grpc_without_model"]["p50_ms"]
              + at_small["in_process_server_runtime"]["p50_ms"]), 3),
          server_runtime_in_process_p50_ms=at_small["in_process_server_runtime"]["p50_ms"]),
      "b_in_process_p50_over_bare_floor_p50": _goal(
          large, at_large["in_process"]["p50_ms"], floor_ms, FLOOR_GOAL,
          in_process_p50_ms=at_large["in_process"]["p50_ms"], bare_floor_p50_ms=floor_ms),
      "c_grpc_p99_over_5_ms": _goal(small, grpc_small["p99_ms"], P99_GOAL_MS, 1.0,
                                    grpc_p99_ms=grpc_small["p99_ms"]),
      "d_swap_p99_over_steady_p99": _goal(
          small, swap["during_swap"]["p99_ms"], swap["steady"]["p99_ms"], SWAP_GOAL,
          swap_p99_ms=swap["during_swap"]["p99_ms"], steady_p99_ms=swap["steady"]["p99_ms"],
          failed_requests=swap["during_swap"]["errors"] + swap["steady"]["errors"]),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--catalogs", type=int, nargs="+", default=[10_000, 1_000_000],
                      help="The smallest and largest are the goals' catalogs.")
  parser.add_argument("--seconds", type=float, default=8.0,
                      help="Duration of each measurement.")
  parser.add_argument("--quick", action="store_true",
                      help="2 s per measurement, batch 1 and concurrency 1 only: every goal is "
                           "still measured, with fewer requests.")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "results" / "serving.json")
  args = parser.parse_args()
  seconds = 2.0 if args.quick else args.seconds
  batches, concurrencies = ((1,), (1,)) if args.quick else (BATCHES, CONCURRENCIES)
  smallest = min(args.catalogs)
  with tempfile.TemporaryDirectory(prefix="bench-serving-") as work_dir:
    results = {str(size): bench_catalog(size, seconds, batches, concurrencies,
                                        pathlib.Path(work_dir),
                                        swaps=(1 if args.quick else SWAPS) * (size == smallest))
               for size in args.catalogs}
  report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "tensorflow": tf.__version__,
                        "load_average_at_end": [round(load, 2) for load in os.getloadavg()]},
            "quick": args.quick, "seconds_per_measurement": seconds,
            "embedding_dim": EMBEDDING_DIM, "candidates": CANDIDATES, "top_k": TOP_K,
            "goals": goals(results), "catalogs": results}
  print(json.dumps(report["goals"], indent=2))
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()

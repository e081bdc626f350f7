"""Serving latency and throughput over gRPC against the in-process SavedModel call.

Run: .venv/bin/python bench/bench_serving.py [--catalogs 10000 1000000] [--seconds 8]
         [--out bench/results/serving.json]

For each catalog size a SavedModel with the serving graph's shape of work is exported: raw ids
in; user embedding by id hash, mean embedding of the history items (looked up by id), scores
against every catalog item (brute force, as the pushed TFRS index), top 200 candidates, an MLP
over (query, candidate) pairs standing in for the DQN head, top 10 out with scores and
propensities. The weights are random: latency does not depend on them. The model is pushed to a
temporary serving root and served by the local server (`python -m serving.server`) in its own
process, as deployed; the load generator sends TF Serving Predict requests from client threads
in this process.

Measured per (catalog, batch in {1, 64}):
  * in process: the loaded signature called in a loop (one caller), the floor;
  * over gRPC at concurrency 1, 8 and 32: p50/p99 latency per request and requests per second.
  * gRPC without a model: the same requests to a Python gRPC server in this process that answers
    at once with an empty response, at concurrency 1: what the transport alone costs.
Ratio: gRPC p50 at concurrency 1 over the in-process p50, the server's overhead (goal ≤ 1.3 at
batch 1). All are measured in the same run, one after the other, on the same machine.
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
from typing import Dict, List

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Before TensorFlow loads: Keras 2 and TensorFlow's log level (components/__init__.py).
import components  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

import grpc  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from components.models import queries
from schemas import contract
from serving import client as client_lib
from serving import push
from serving import server as server_lib

BATCHES = (1, 64)
CONCURRENCIES = (1, 8, 32)
EMBEDDING_DIM = 32
CANDIDATES = 200
TOP_K = 10
USER_BUCKETS = 100_000


class SyntheticRecommender(tf.Module):
  """The serving contract over `catalog_size` items, with the serving graph's costs."""

  def __init__(self, catalog_size: int, seed: int = 0):
    super().__init__()
    rng = np.random.default_rng(seed)
    self.item_ids = tf.constant(np.array([f"i{index}" for index in range(catalog_size)],
                                         dtype=object))
    self.item_index = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        self.item_ids, tf.range(catalog_size, dtype=tf.int64)), default_value=-1)
    self.items = tf.Variable(rng.normal(size=(catalog_size, EMBEDDING_DIM)).astype(np.float32))
    self.users = tf.Variable(rng.normal(size=(USER_BUCKETS, EMBEDDING_DIM)).astype(np.float32))
    self.hidden = tf.Variable(rng.normal(size=(2 * EMBEDDING_DIM, 64)).astype(np.float32) / 8)
    self.out = tf.Variable(rng.normal(size=(64, 1)).astype(np.float32) / 8)

  @tf.function(input_signature=queries.INPUT_SPECS)
  def serve(self, user_id, history, timestamp):
    del timestamp  # the contract's input; an hour embedding costs nothing next to the rest
    users = tf.gather(self.users, tf.strings.to_hash_bucket_fast(user_id, USER_BUCKETS))
    indices = self.item_index.lookup(history)
    known = tf.cast(indices >= 0, tf.float32)[:, :, tf.newaxis]
    history_mean = tf.reduce_sum(tf.gather(self.items, tf.maximum(indices, 0)) * known, 1) / (
        tf.reduce_sum(known, 1) + 1.0)
    query = users + history_mean
    _, candidates = tf.math.top_k(tf.matmul(query, self.items, transpose_b=True), k=CANDIDATES)
    pairs = tf.concat([tf.repeat(query[:, tf.newaxis], CANDIDATES, axis=1),
                       tf.gather(self.items, candidates)], axis=2)
    q_values = tf.squeeze(tf.nn.relu(pairs @ self.hidden) @ self.out, -1)
    scores, best = tf.math.top_k(q_values, k=TOP_K)
    return {contract.ITEM_IDS: tf.gather(self.item_ids, tf.gather(candidates, best, batch_dims=1)),
            contract.SCORES: scores,
            contract.PROPENSITIES: tf.ones_like(scores)}


def export(catalog_size: int, path: pathlib.Path) -> None:
  module = SyntheticRecommender(catalog_size)
  tf.saved_model.save(module, str(path), signatures={
      contract.SERVING_SIGNATURE: module.serve.get_concrete_function()})


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


def in_process(model_dir: pathlib.Path, requests: list, seconds: float) -> Dict[str, float]:
  serve = tf.saved_model.load(str(model_dir)).signatures[contract.SERVING_SIGNATURE]
  inputs = [{key: tf.make_ndarray(tensor) for key, tensor in request.inputs.items()}
            for request in requests]
  for warm in inputs[:3]:
    serve(**warm)
  latencies, start = [], time.perf_counter()
  while time.perf_counter() - start < seconds:
    call = inputs[len(latencies) % len(inputs)]
    began = time.perf_counter()
    outputs = serve(**call)
    outputs[contract.ITEM_IDS].numpy()
    latencies.append((time.perf_counter() - began) * 1000)
  return summary(latencies, time.perf_counter() - start)


def over_grpc(target: str, requests: list, concurrency: int, seconds: float) -> Dict[str, float]:
  latencies: List[float] = []
  errors: List[str] = []
  lock = threading.Lock()
  stop = time.perf_counter() + seconds

  def worker(offset: int) -> None:
    with grpc.insecure_channel(target) as channel:
      predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
      sent = offset
      while time.perf_counter() < stop:
        began = time.perf_counter()
        try:
          predict(requests[sent % len(requests)], timeout=60)
        except grpc.RpcError as error:
          errors.append(error.code().name)
          continue
        with lock:
          latencies.append((time.perf_counter() - began) * 1000)
        sent += 1

  start = time.perf_counter()
  threads = [threading.Thread(target=worker, args=(index,)) for index in range(concurrency)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  result = summary(latencies, time.perf_counter() - start)
  result["errors"] = len(errors)
  return result


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


def bench_catalog(catalog_size: int, seconds: float, work_dir: pathlib.Path) -> Dict:
  model_dir = work_dir / f"model-{catalog_size}"
  export(catalog_size, model_dir)
  serving_root = work_dir / f"serving-{catalog_size}"
  push.push(model_dir, serving_root, contract.DEFAULT_MODEL_NAME, version=1)
  results = {}
  with server_lib.running_process(serving_root, poll_seconds=0,
                                  stderr=subprocess.DEVNULL) as (target, _):
    with client_lib.RecommenderClient(target) as client:
      client.wait_until_available(timeout=300)
    for batch in BATCHES:
      requests = requests_for(batch, catalog_size, count=64, seed=batch)
      floor = in_process(model_dir, requests, seconds)
      transport = grpc_transport(requests, seconds)
      grpc_results = {str(concurrency): over_grpc(target, requests, concurrency, seconds)
                      for concurrency in CONCURRENCIES}
      results[str(batch)] = {
          "in_process": floor, "grpc_without_model": transport, "grpc": grpc_results,
          "p50_ratio_grpc_over_in_process": round(
              grpc_results["1"]["p50_ms"] / floor["p50_ms"], 3)}
      print(json.dumps({"catalog": catalog_size, "batch": batch, **results[str(batch)]}),
            flush=True)
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--catalogs", type=int, nargs="+", default=[10_000, 1_000_000])
  parser.add_argument("--seconds", type=float, default=8.0,
                      help="Duration of each measurement.")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "results" / "serving.json")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(prefix="bench-serving-") as work_dir:
    results = {str(size): bench_catalog(size, args.seconds, pathlib.Path(work_dir))
               for size in args.catalogs}
  report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "tensorflow": tf.__version__},
            "seconds_per_measurement": args.seconds, "embedding_dim": EMBEDDING_DIM,
            "candidates": CANDIDATES, "top_k": TOP_K, "catalogs": results}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()

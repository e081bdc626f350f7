"""Prometheus metrics of the serving process, at TF Serving's path on the REST port.

Each server has its own registry (not prometheus_client's global one), so several servers in
one process (tests, benchmarks) count separately.
"""
import contextlib
import time
from typing import Iterator

import grpc
import prometheus_client

from serving import registry as registry_lib

# Where TF Serving's monitoring config (serving/deploy/monitoring.config) exposes its metrics.
METRICS_PATH = "/monitoring/prometheus/metrics"
# Seconds: from sub-millisecond cache-warm calls to requests stuck behind a model load.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ServingMetrics:
  """Request count, latency and errors per API method and protocol; loaded versions."""

  def __init__(self, model_registry: registry_lib.ModelRegistry):
    self.registry = prometheus_client.CollectorRegistry()
    self.requests = prometheus_client.Counter(
        "recsys_serving_requests", "Requests received.", ["method", "protocol"],
        registry=self.registry)
    self.errors = prometheus_client.Counter(
        "recsys_serving_request_errors", "Requests answered with an error, by status code.",
        ["method", "protocol", "code"], registry=self.registry)
    self.latency = prometheus_client.Histogram(
        "recsys_serving_request_latency_seconds", "Time to answer a request.",
        ["method", "protocol"], buckets=_LATENCY_BUCKETS, registry=self.registry)
    loaded = prometheus_client.Gauge(
        "recsys_serving_model_version", "The newest loaded version of the model.",
        ["model"], registry=self.registry)
    model_name = model_registry.model_name
    loaded.labels(model_name).set_function(
        lambda: max(model_registry.snapshot().servables, default=0))
    failures = prometheus_client.Gauge(
        "recsys_serving_failed_versions", "Versions that failed to load and are not served.",
        ["model"], registry=self.registry)
    failures.labels(model_name).set_function(lambda: len(model_registry.snapshot().failures))

  @contextlib.contextmanager
  def observe(self, method: str, protocol: str) -> Iterator["_Outcome"]:
    """Times one request; the body sets `outcome.code` to the status it answers with."""
    self.requests.labels(method, protocol).inc()
    outcome = _Outcome()
    start = time.perf_counter()
    try:
      yield outcome
    finally:
      self.latency.labels(method, protocol).observe(time.perf_counter() - start)
      if outcome.code != grpc.StatusCode.OK:
        self.errors.labels(method, protocol, outcome.code.name).inc()

  def exposition(self) -> bytes:
    """The metrics in Prometheus' text format."""
    return prometheus_client.generate_latest(self.registry)


class _Outcome:
  code: grpc.StatusCode = grpc.StatusCode.OK

"""bench/bench_serving.py: the four goals' ratios and verdicts from a run's measurements."""
import importlib.util
import pathlib

import pytest

_BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "bench_serving.py"
_spec = importlib.util.spec_from_file_location("bench_serving", _BENCH)
bench_serving = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_serving)


def _results(grpc_p50=3.0, grpc_p99=4.0, swap_p99=9.0, swap_errors=0, in_process_1m=30.0):
  def batch_1(in_process_p50, grpc):
    return {"1": {"in_process": {"p50_ms": in_process_p50},
                  "in_process_server_runtime": {"p50_ms": in_process_p50 - 0.5},
                  "grpc_without_model": {"p50_ms": 1.0}, "grpc": {"1": grpc}}}

  return {
      "10000": {**batch_1(1.5, {"p50_ms": grpc_p50, "p99_ms": grpc_p99}),
                "bare_floor_batch_1": {"p50_ms": 0.5},
                "version_swap_batch_1": {"steady": {"p99_ms": 5.0, "errors": 0},
                                         "during_swap": {"p99_ms": swap_p99,
                                                         "errors": swap_errors}}},
      "1000000": {**batch_1(in_process_1m, {"p50_ms": 31.0, "p99_ms": 40.0}),
                  "bare_floor_batch_1": {"p50_ms": 25.0}}}


def test_goals_are_ratios_of_the_smallest_and_largest_catalogs_measurements():
  goals = bench_serving.goals(_results())
  grpc = goals["a_grpc_p50_over_round_trip_plus_in_process_p50"]
  assert (grpc["catalog"], grpc["ratio"], grpc["goal"], grpc["met"]) == (10000, 1.2, 1.2, True)
  assert grpc["ratio_with_server_runtime_in_process"] == 1.5  # 3.0 / (1.0 + 1.0)
  floor = goals["b_in_process_p50_over_bare_floor_p50"]
  assert (floor["catalog"], floor["ratio"], floor["goal"], floor["met"]) == (1000000, 1.2, 1.5,
                                                                              True)
  tail = goals["c_grpc_p99_over_5_ms"]
  assert (tail["ratio"], tail["goal"], tail["met"]) == (0.8, 1.0, True)
  swap = goals["d_swap_p99_over_steady_p99"]
  assert (swap["ratio"], swap["goal"], swap["met"], swap["failed_requests"]) == (1.8, 2.0, True, 0)


@pytest.mark.parametrize("measured, goal", [
    ({"grpc_p50": 3.1}, "a_grpc_p50_over_round_trip_plus_in_process_p50"),
    ({"in_process_1m": 40.0}, "b_in_process_p50_over_bare_floor_p50"),
    ({"grpc_p99": 5.5}, "c_grpc_p99_over_5_ms"),
    ({"swap_p99": 10.5}, "d_swap_p99_over_steady_p99"),
    ({"swap_errors": 1}, "d_swap_p99_over_steady_p99"),
])
def test_a_goal_beyond_its_bound_or_with_failed_requests_is_not_met(measured, goal):
  goals = bench_serving.goals(_results(**measured))
  assert not goals[goal]["met"]
  assert sum(not verdict["met"] for verdict in goals.values()) == 1

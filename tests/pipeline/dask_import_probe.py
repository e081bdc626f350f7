"""A module that remembers which thread imported it: test_dask_runner checks that a Dask worker
imports a DoFn's module before its task thread unpickles the DoFn."""
import threading

IMPORTED_IN = threading.current_thread().name


def imported_in(_) -> str:
  return IMPORTED_IN

"""Simulation, beside the pipeline's stages: an environment with an explicit user model.

  simulator.py     the seeded user simulator (its docstring is the behaviour model)
  policies.py      reference policies: uniform, the platform's logging policy, the oracle
  model_policy.py  an exported SavedModel as a simulator policy
  generator.py     the built-in default dataset: the logging policy's impressions

Evaluation and the benchmarks use it; the models and serving never do (pyproject.toml's import
contracts), so nothing trained or served depends on the simulator.
"""

"""The pipeline's start-up cost: which heavy packages importing it pulls in."""
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# The pipeline's definition, both runners and every module a component runs.
_PIPELINE_MODULES = ("pipeline.pipeline", "pipeline.local_runner", "pipeline.kubeflow_runner",
                     "pipeline.lineage", "pipeline.run_report", "components.models.trainer",
                     "components.models.preprocessing")


def test_the_pipeline_imports_tfx_by_module_not_through_tfx_v1():
  # `tfx.v1` imports every TFX extension, Google Cloud AI Platform's client among them: 15 s
  # more of every `recsys run`, for a client nothing here calls.
  imported = subprocess.run(
      [sys.executable, "-c", "import sys\n"
       + "".join(f"import {module}\n" for module in _PIPELINE_MODULES)
       + "print(sorted({'tfx.v1', 'google.cloud.aiplatform'} & set(sys.modules)))"],
      cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
  assert imported == "[]"

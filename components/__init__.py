"""The pipeline's stages, in data-flow order, and the thin TFX components around them.

  data/         ingestion, spans, validation logic, session building (Beam)
  models/       preprocessing (tf.Transform), the two-tower model, the DQN head, the serving graph
  evaluation/   ranking, beyond-accuracy and off-policy metrics, the release gate, the report
  simulation/   the user simulator, the default-data generator, simulator policies
  *.py          the custom TFX components, one module per stage; their logic is in the rooms above

TensorFlow Recommenders needs Keras 2 (tf-keras); TensorFlow 2.16 defaults to Keras 3, so the
switch is made here, before anything in the project can import TensorFlow (serving/ and
pipeline/ import this package first). On a machine without an NVIDIA device, TensorFlow's C++
start-up logs three "Unable to register cu… factory" errors that mean nothing there; they are
kept out of the output unless TF_CPP_MIN_LOG_LEVEL is set.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# Level 3 hides C++ ERROR lines too, which is what the CUDA registration messages are; with a
# GPU, where such lines can matter, only warnings and info are hidden.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if os.path.exists("/dev/nvidia0") else "3")

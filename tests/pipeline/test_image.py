"""The pipeline image (./Dockerfile) carries the CUDA runtime TensorFlow's GPU steps need."""
import importlib.metadata
import pathlib
import re
from typing import Dict

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _pins(lock: str) -> Dict[str, str]:
  """{package: version} of a uv-compiled requirements file."""
  pins = {}
  for line in (ROOT / lock).read_text().splitlines():
    if line and not line.startswith((" ", "#", "-")):
      name, version = line.split("==")
      pins[name.lower()] = version
  return pins


def test_the_gpu_lock_pins_what_tensorflows_and_cuda_extra_requires():
  gpu = _pins("requirements-gpu.txt")
  tensorflow = importlib.metadata.version("tensorflow")
  assert gpu["tensorflow"] == _pins("requirements.txt")["tensorflow"] == tensorflow == "2.16.2"
  cuda = [Requirement(spec) for spec in importlib.metadata.requires("tensorflow")
          if Requirement(spec).marker and Requirement(spec).marker.evaluate(
              {"extra": "and-cuda"}) and not Requirement(spec).marker.evaluate({"extra": ""})]
  assert {requirement.name for requirement in cuda} >= {"nvidia-cudnn-cu12", "nvidia-cublas-cu12"}
  for requirement in cuda:
    assert requirement.specifier.contains(gpu[requirement.name]), (requirement, gpu.get(
        requirement.name))


def test_the_gpu_lock_is_the_cpu_lock_plus_the_cuda_wheels_only():
  cpu, gpu = _pins("requirements.txt"), _pins("requirements-gpu.txt")
  assert {name: gpu[name] for name in cpu} == cpu
  assert sorted(set(gpu) - set(cpu)) and all(
      name.startswith("nvidia-") for name in set(gpu) - set(cpu))


def test_the_image_installs_the_gpu_lock_on_python_3_10_and_links_its_cuda_libraries():
  dockerfile = (ROOT / "Dockerfile").read_text()
  assert re.search(r"^FROM python:3\.10[-\w]*$", dockerfile, re.MULTILINE)
  assert re.search(r"^ARG REQUIREMENTS=requirements-gpu\.txt$", dockerfile, re.MULTILINE)
  assert 'uv pip install --system --no-cache -r "$REQUIREMENTS"' in dockerfile
  # TF 2.16 does not find the nvidia-* wheels' libraries unless the linker is told where.
  assert "site-packages/nvidia/*/lib > /etc/ld.so.conf.d/" in dockerfile
  assert "ldconfig" in dockerfile

# Pipeline image: the same code and pins as the local environment, for Kubeflow Pipelines and for
# Beam workers, with the CUDA runtime TensorFlow 2.16.2 is built against for the GPU steps
# (requirements-gpu.txt: requirements.txt plus the nvidia-* wheels of tensorflow[and-cuda]).
# Build from the repository root:  docker build -t recsys-pipeline .
# A CPU-only image (e.g. for Beam workers, 3 GB smaller):
#   docker build --build-arg REQUIREMENTS=requirements.txt -t recsys-pipeline-cpu .
FROM python:3.10-slim

ARG REQUIREMENTS=requirements-gpu.txt
ENV PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    RECSYS_HOME=/var/lib/recsys

WORKDIR /opt/recsys
COPY requirements.txt requirements-gpu.txt ./
RUN pip install --no-cache-dir uv \
 && uv pip install --system --no-cache -r "$REQUIREMENTS"
# TensorFlow 2.16 does not find the CUDA libraries of the nvidia-* wheels by itself
# (tensorflow/tensorflow#63362): put their lib directories on the dynamic linker's path. The
# node's NVIDIA driver is mounted by the cluster's device plugin, as for any CUDA image.
RUN if [ -d /usr/local/lib/python3.10/site-packages/nvidia ]; then \
      ls -d /usr/local/lib/python3.10/site-packages/nvidia/*/lib > /etc/ld.so.conf.d/nvidia-pip.conf \
      && ldconfig; \
    fi

COPY pyproject.toml README.md ./
COPY components components
COPY pipeline pipeline
COPY schemas schemas
COPY serving serving
# Editable, so the package finds schemas/ next to it as it does in a checkout.
RUN uv pip install --system --no-cache --no-deps -e .

ENTRYPOINT ["recsys"]
CMD ["--help"]

# Pipeline image: the same code and pins as the local environment, for Kubeflow Pipelines and for
# Beam workers. Build from the repository root:  docker build -t recsys-pipeline .
FROM python:3.10-slim

ENV PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    RECSYS_HOME=/var/lib/recsys

WORKDIR /opt/recsys
COPY requirements.txt .
RUN pip install --no-cache-dir uv \
 && uv pip install --system --no-cache -r requirements.txt

COPY pyproject.toml README.md ./
COPY components components
COPY pipeline pipeline
COPY schemas schemas
COPY serving serving
# Editable, so the package finds schemas/ next to it as it does in a checkout.
RUN uv pip install --system --no-cache --no-deps -e .

ENTRYPOINT ["recsys"]
CMD ["--help"]

# One image for every execq process: worker, beat, flower, exchange-sim, migrate.
# The base is pinned by exact tag; to pin it by digest, build with
# --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:... (README, "Docker Compose").
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE}
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Workers serve Prometheus metrics here (only workers open it; compose's monitoring
# profile scrapes it). EXECQ_METRICS_PORT=0 turns it off.
ENV EXECQ_METRICS_PORT=9100
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY . .
RUN pip install --no-cache-dir --no-deps -e .
RUN useradd --create-home execq
USER execq

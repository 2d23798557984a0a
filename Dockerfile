# One image for every execq process: worker, beat, flower, exchange-sim, migrate.
FROM python:3.11-slim
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

# syntax=docker/dockerfile:1.7
# The MLflow tracking server and model registry: PostgreSQL backend store, artifacts proxied to a volume.
# Build from the repository root: docker build -f docker/mlflow.Dockerfile .

FROM python:3.11.14-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/lock.txt /tmp/requirements/lock.txt
# The locked versions, so the server speaks the same MLflow as its clients; the binary psycopg2 needs no compiler.
# MLFLOW_EXPOSE_PROMETHEUS (below) makes the server import prometheus_flask_exporter, which only mlflow[extras] brings.
RUN pip install mlflow psycopg2-binary prometheus-flask-exporter -c /tmp/requirements/lock.txt

FROM python:3.11.14-slim
RUN useradd --uid 50000 --gid 0 --home-dir /opt/doodle --no-create-home --shell /usr/sbin/nologin mlflow \
 && mkdir -p /opt/doodle/storage/mlflow/artifacts /opt/doodle/metrics \
 && chown -R 50000:0 /opt/doodle && chmod -R g+rwX /opt/doodle
COPY --from=build /opt/venv /opt/venv
# Options as the environment variables mlflow server reads, so compose can override any one of them.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLFLOW_HOST=0.0.0.0 \
    MLFLOW_PORT=5000 \
    MLFLOW_WORKERS=2 \
    MLFLOW_ARTIFACTS_DESTINATION=/opt/doodle/storage/mlflow/artifacts \
    MLFLOW_EXPOSE_PROMETHEUS=/opt/doodle/metrics \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
WORKDIR /opt/doodle
USER 50000:0
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
# Every option comes from an MLFLOW_* variable above or from compose; the script checks the two that have no default.
COPY --chmod=755 docker/mlflow-start.sh /usr/local/bin/mlflow-start
CMD ["mlflow-start"]

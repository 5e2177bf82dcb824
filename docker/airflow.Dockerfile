# syntax=docker/dockerfile:1.7
# Airflow for the distributed stack: the official image plus the project (doodle_lib, DAGs, plugins),
# so every component (api-server, scheduler, dag-processor, triggerer, Celery workers) runs the same code.
# Build from the repository root: docker build -f docker/airflow.Dockerfile .

# doodle_lib/_simplify.c, the arithmetic of the preprocessing hot path (doodle_lib.drawing.simplify), compiled for
# the Airflow image's CPython 3.11, against Debian 12's glibc (it runs on that or any newer one); the compiler stays
# in this stage. The venv brings the setuptools that Python 3.11 bundles; setup.py alone (no pyproject.toml) is all
# it reads.
FROM python:3.11.14-slim-bookworm AS extension
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.py ./
COPY doodle_lib/_simplify.c doodle_lib/
RUN python -m venv /tmp/build && /tmp/build/bin/python setup.py build_ext --inplace

FROM apache/airflow:3.3.2-python3.11

USER root
# libcairo2: ingest renders stroke feedback to bitmaps (doodle_lib.drawing over cairocffi).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcairo2 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/doodle/data /opt/doodle/storage /opt/airflow/auth \
 && chown -R airflow:0 /opt/doodle /opt/airflow/auth \
 && chmod -R g+rwX /opt/doodle /opt/airflow/auth
COPY --chmod=755 docker/airflow-healthcheck.sh /usr/local/bin/airflow-healthcheck
COPY --chmod=755 docker/airflow-init.sh /usr/local/bin/airflow-init
COPY --chmod=755 docker/bootstrap.sh /usr/local/bin/doodle-bootstrap
USER airflow

# Dependencies before the source, so a code change does not reinstall torch.
COPY --chown=airflow:0 requirements/base.in requirements/lock.txt /opt/doodle/requirements/
# torch first, pinned, from the CPU index: from PyPI an unpinned resolve pulls several GB of CUDA packages.
# Then the locked versions of requirements/base.in (not the dev tools), with Airflow held at the image's version.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir "apache-airflow==3.3.2" \
      -r /opt/doodle/requirements/base.in -c /opt/doodle/requirements/lock.txt

COPY --chown=airflow:0 doodle_lib/ /opt/doodle/app/doodle_lib/
COPY --from=extension --chown=airflow:0 /src/doodle_lib/*.so /opt/doodle/app/doodle_lib/
COPY --chown=airflow:0 dags/ /opt/doodle/app/dags/
COPY --chown=airflow:0 plugins/ /opt/doodle/app/plugins/
COPY --chown=airflow:0 data/quickdraw-sample/ /opt/doodle/app/data/quickdraw-sample/
ENV PYTHONPATH=/opt/doodle/app \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/doodle/app/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/doodle/app/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    DOODLE_DATA_DIR=/opt/doodle/data \
    DOODLE_STORAGE_DIR=/opt/doodle/storage \
    DOODLE_SAMPLE_DIR=/opt/doodle/app/data/quickdraw-sample
# One image, several components: the script checks the one this container runs (see the script).
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=5 CMD ["airflow-healthcheck"]

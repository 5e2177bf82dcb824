# syntax=docker/dockerfile:1.7
# The web app: gunicorn with webapp/gunicorn.conf.py, the same entry point as the embedded mode.
# Build from the repository root: docker build -f docker/webapp.Dockerfile .

# doodle_lib/_simplify.c, the arithmetic of the preprocessing hot path (doodle_lib.drawing.simplify), compiled for
# CPython 3.11 on Debian 12 like the image below; the compiler stays in this stage. The venv brings the setuptools
# that Python 3.11 bundles; setup.py alone (no pyproject.toml) is all it reads.
FROM python:3.11.14-slim-bookworm AS extension
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.py ./
COPY doodle_lib/_simplify.c doodle_lib/
RUN python -m venv /tmp/build && /tmp/build/bin/python setup.py build_ext --inplace

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/lock.txt /tmp/requirements/lock.txt
COPY docker/webapp-requirements.in /tmp/requirements/webapp.in
# torch first, pinned, from the CPU index: from PyPI an unpinned resolve pulls several GB of CUDA packages.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -r /tmp/requirements/webapp.in -c /tmp/requirements/lock.txt

FROM python:3.11.14-slim-bookworm
# libcairo2: the server renders the browser's strokes exactly as Google rendered numpy_bitmap.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcairo2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 50000 --gid 0 --home-dir /opt/doodle --no-create-home --shell /usr/sbin/nologin doodle \
 && mkdir -p /opt/doodle/data /opt/doodle/storage \
 && chown -R 50000:0 /opt/doodle && chmod -R g+rwX /opt/doodle
COPY --from=build /opt/venv /opt/venv
# uid 50000, gid 0 like the Airflow image: both write data/ and storage/ on the same volumes.
COPY --chown=50000:0 doodle_lib/ /opt/doodle/app/doodle_lib/
COPY --from=extension --chown=50000:0 /src/doodle_lib/*.so /opt/doodle/app/doodle_lib/
COPY --chown=50000:0 webapp/ /opt/doodle/app/webapp/
COPY --chown=50000:0 data/quickdraw-sample/ /opt/doodle/app/data/quickdraw-sample/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/doodle/app \
    PYTHONUNBUFFERED=1 \
    DOODLE_DATA_DIR=/opt/doodle/data \
    DOODLE_STORAGE_DIR=/opt/doodle/storage \
    DOODLE_SAMPLE_DIR=/opt/doodle/app/data/quickdraw-sample \
    DOODLE_WEBAPP_BIND=0.0.0.0:8000
WORKDIR /opt/doodle/app
USER 50000:0
EXPOSE 8000
# The slim image has no curl; Python's urllib is already there. /healthz: the process answers.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gunicorn", "-c", "webapp/gunicorn.conf.py"]

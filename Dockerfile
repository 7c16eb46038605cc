# syntax=docker/dockerfile:1
#
# The one image that every Airflow service and Celery worker of docker-compose.yaml runs.
#
#   docker build -t lightly-airflow:3.3.2-cpu .                                  # CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cuda -t lightly-airflow:3.3.2-cuda .  # CUDA 13 torch + faiss-gpu
#
# Python packages come from our lock (requirements.txt), not from the apache/airflow image, so the image and
# a developer's venv carry the same versions. The lock is resolved for x86_64 Linux (decord has no arm64
# wheels), so the image is linux/amd64; docker-compose.yaml asks for that platform.
#
# The base is pinned by tag. Where you can pull, pin it by digest as well, e.g.
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# cpu or cuda: see docker/install-python-deps.sh for what each installs.
ARG TORCH_VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# Same uid as the official Airflow image; gid 0 so that files written to volumes stay group-usable.
ARG AIRFLOW_UID=50000

# PYTHONPATH: dags/ import the plugin package lightly_airflow (the Makefile sets the same for a venv).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow \
    PYTHONPATH=/opt/airflow/plugins \
    LIGHTLY_TORCH_VARIANT=${TORCH_VARIANT}

# curl: the compose healthchecks. Every native library the Python wheels need is bundled in the wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --uid "${AIRFLOW_UID}" --gid 0 --home-dir /home/airflow --create-home --shell /bin/bash airflow

# Dependencies first, so that a change to the code does not reinstall ~2-6 GB of wheels.
COPY requirements.txt /tmp/build/requirements.txt
COPY docker/install-python-deps.sh docker/requirements-gpu.txt /tmp/build/docker/
RUN TORCH_CPU_INDEX="${TORCH_CPU_INDEX}" sh /tmp/build/docker/install-python-deps.sh "${TORCH_VARIANT}" \
    && rm -rf /tmp/build

# The project: lightly_tasks installed as a package (setuptools is in the lock, so no build isolation needed),
# DAGs and plugins where Airflow looks for them.
WORKDIR /opt/lightly
COPY pyproject.toml README.md ./
COPY lightly_tasks/ lightly_tasks/
RUN pip install --no-deps --no-build-isolation . && rm -rf build ./*.egg-info

WORKDIR ${AIRFLOW_HOME}
COPY --chown=airflow:0 dags/ dags/
COPY --chown=airflow:0 plugins/ plugins/
# artifacts/ and logs/ exist in the image so that named volumes mounted there start owned by airflow.
RUN mkdir -p artifacts logs auth \
    && chown -R airflow:0 "${AIRFLOW_HOME}" \
    && chmod -R g+rwX "${AIRFLOW_HOME}"

USER airflow
EXPOSE 8080
CMD ["airflow", "version"]

# The API (gunicorn) and the one-shot migration (`latentforge db upgrade`).
# No torch here: api/ never imports it, and the [api] extra does not pull it.
# Python 3.12: under gunicorn, CPython 3.11 (3.11.2 and 3.11.7 seen) segfaulted in a full
# garbage collection on a page that loads many ORM rows twice; 3.12.1 did not (see README).
# The base is a build argument so a test (or an air-gapped site) can build on a local image that provides
# python3 and pip on PATH; production keeps python:3.12-slim.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same uid/gid as the worker image, so the two agree on any volume an operator mounts into both.
RUN groupadd --system --gid 10001 latentforge \
 && useradd --system --uid 10001 --gid latentforge --create-home --home-dir /home/latentforge latentforge

WORKDIR /app
COPY pyproject.toml README.md ./
COPY api/ api/
COPY worker/ worker/
COPY shared/ shared/
COPY migrations/ migrations/
COPY latentforge/ latentforge/
RUN pip install ".[api]" && rm -rf build *.egg-info

# Mount points owned by the app user (home: scratch, cache; data): an empty
# named volume takes this ownership the first time it is mounted.
RUN mkdir -p /var/lib/latentforge /data \
 && chown -R latentforge:latentforge /var/lib/latentforge /data

USER latentforge
EXPOSE 8000
# Run from /app: the command names the config file by its path.
CMD ["gunicorn", "-c", "api/gunicorn_conf.py", "api.wsgi:app"]

# syntax=docker/dockerfile:1
# The dwf REST API: FastAPI + uvicorn, no torch (the API never imports torch; validation and training run on
# the worker). Build from the repo root: docker build -f docker/api.Dockerfile -t dwf-api .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (cached layer): pyproject's list minus the torch stack, which only the worker needs.
COPY pyproject.toml ./
RUN python - <<'PY' > /tmp/requirements-api.txt && pip install -r /tmp/requirements-api.txt
import re, tomllib
TORCH_STACK = {"torch", "torchvision", "onnx2torch"}
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    name = re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0].lower()
    if name not in TORCH_STACK:
        print(dep)
PY

COPY dwf_core ./dwf_core
COPY dwf_service ./dwf_service
COPY api ./api
COPY worker ./worker
COPY docker/entrypoint-api.sh /usr/local/bin/entrypoint-api.sh
# --no-deps: the torch stack stays out; importing it from the API would fail loudly, which is the point.
RUN pip install --no-deps . \
    && chmod 0755 /usr/local/bin/entrypoint-api.sh \
    && useradd --system --uid 10001 --home-dir /var/lib/dwf --create-home dwf

USER dwf
ENV DWF_DATA_DIR=/var/lib/dwf
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=5 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
ENTRYPOINT ["/usr/local/bin/entrypoint-api.sh"]

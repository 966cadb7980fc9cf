# routing-engine: API + workers. Build: docker build -t routing-engine .
# torch is pinned to 2.13.0; on x86_64 PyPI's wheel pulls CUDA libraries. For a small CPU-only image, pass
# your CPU wheel index: docker build --build-arg TORCH_INDEX_URL=<cpu wheel index> -t routing-engine .
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
# The container binds 0.0.0.0 so the published port reaches it; beyond loopback the service refuses to start with
# no token: run it with ROUTING_OPERATE_TOKEN (and ROUTING_READ_TOKEN / ROUTING_INGEST_TOKEN as needed) set, e.g.
# docker run -e ROUTING_OPERATE_TOKEN=$(openssl rand -hex 32) ...  (see README, Security)
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    ROUTING_HOST=0.0.0.0 ROUTING_STATE_DIR=/data ROUTING_LOG_FORMAT=json

WORKDIR /app
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    else pip install --no-cache-dir torch==2.13.0; fi
COPY pyproject.toml README.md ./
COPY src ./src
COPY streams ./streams
COPY dashboards ./dashboards
COPY config ./config
RUN pip install --no-cache-dir .

# The image holds no trained model, but it holds the default training data (BANKING77, CC BY 4.0, inside the
# package): `up` trains the fast path on first start (~75 s on 2 cores), or train once into the volume
# (compose: `docker compose run --rm train`, which also fine-tunes the fallback).
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
ENTRYPOINT ["routing-engine"]
CMD ["up"]

# syntax=docker/dockerfile:1
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/status-proxy
COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
RUN /opt/status-proxy/bin/pip install .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/status-proxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STATUS_PROXY_DATABASE_URL=sqlite:////data/status-proxy.db
RUN groupadd --system --gid 10001 status-proxy \
    && useradd --system --uid 10001 --gid status-proxy --home-dir /data --no-create-home status-proxy \
    && mkdir /data && chown status-proxy:status-proxy /data
COPY --from=build /opt/status-proxy /opt/status-proxy
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["status-proxy"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]

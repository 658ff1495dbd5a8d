# splitwatch: one image for every process (proxy, analyzer, drift, report).
#   docker build -t splitwatch .
#   docker run -p 8080:8080 -v $PWD/splitwatch.yaml:/etc/splitwatch/config.yaml splitwatch
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY stats ./stats
COPY drift ./drift
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[drift]"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/splitwatch --create-home splitwatch
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER splitwatch
WORKDIR /var/lib/splitwatch
# The spool (events waiting for Kafka) and the admin overrides live here: mount a volume so that
# they survive a restart of the container.
VOLUME ["/var/lib/splitwatch"]
ENV SPLITWATCH_KAFKA__SPOOL__DIR=/var/lib/splitwatch/spool \
    SPLITWATCH_PROXY__STATE_DIR=/var/lib/splitwatch/state \
    PYTHONUNBUFFERED=1
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["splitwatch"]
CMD ["proxy", "--config", "/etc/splitwatch/config.yaml", "--host", "0.0.0.0", "--port", "8080"]

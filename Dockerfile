# splitwatch images. Two targets from one file:
#   docker build --target proxy -t splitwatch-proxy .   slim: the routing proxy (and its tracing), no drift extra
#   docker build --target full  -t splitwatch .         analyzer, report and drift detector
# The full image's drift engine is scipy (`drift.engine: scipy`, the default; the drift extra adds
# scikit-learn for the domain classifier): BSD-licensed, numpy 2. alibi-detect (`drift.engine: alibi`,
# Business Source License 1.1, about a gigabyte with opencv, transformers and numba, numpy < 2) is in
# neither image: build one with the `alibi` extra (docs/deployment.md). tests/test_helm.py checks the
# targets and that the Helm chart gives each workload the image that can run it.

FROM python:3.11-slim AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY stats ./stats
COPY drift ./drift

FROM source AS wheels-proxy
# the tracing extra: OpenTelemetry's SDK and OTLP/HTTP exporter, for `tracing:` (docs/tracing.md)
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[tracing]"

FROM source AS wheels-full
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[drift,eval,training,data,trackers,s3,tracing]"

# What both images share: an unprivileged user, the data volume and the paths on it.
FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /var/lib/splitwatch --create-home splitwatch
WORKDIR /var/lib/splitwatch
# The spool (events waiting for Kafka), the admin overrides, the lake and the drift references live
# here: mount a volume so that they survive a restart of the container.
VOLUME ["/var/lib/splitwatch"]
ENV SPLITWATCH_KAFKA__SPOOL__DIR=/var/lib/splitwatch/spool \
    SPLITWATCH_PROXY__STATE_DIR=/var/lib/splitwatch/state \
    PYTHONUNBUFFERED=1
STOPSIGNAL SIGTERM
ENTRYPOINT ["splitwatch"]

FROM runtime AS full
LABEL io.splitwatch.drift-engine="scipy"
# WordNet 3.0 for the eval's METEOR (nltk reads it from /usr/share/wordnet; nothing is downloaded)
RUN apt-get update && apt-get install -y --no-install-recommends wordnet-base && rm -rf /var/lib/apt/lists/*
COPY --from=wheels-full /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER splitwatch
EXPOSE 9108 9109
CMD ["analyzer", "--config", "/etc/splitwatch/config.yaml", "--host", "0.0.0.0", "--port", "9108"]

# Last, so that a plain `docker build .` gives the slim proxy image.
FROM runtime AS proxy
COPY --from=wheels-proxy /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER splitwatch
EXPOSE 8080
CMD ["proxy", "--config", "/etc/splitwatch/config.yaml", "--host", "0.0.0.0", "--port", "8080"]

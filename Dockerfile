# syntax=docker/dockerfile:1
#
# The one Mercato image: `mercato up` (everything in one process, SQLite) by default, or one
# service with `serve <service>`. Build: docker build -t mercato:dev .   (docs/DEPLOY.md)
#
# Builder and runtime must be the same Debian release: the binary links against its glibc.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# The Kafka client builds librdkafka from its bundled source: configure, make, zlib (bookworm's versions).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make=4.3-4.1 pkg-config=1.8.1-1 zlib1g-dev=1:1.2.13.dfsg-1+deb12u1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit), so a code change rebuilds
# only the workspace crates, not the ~300 dependencies. The binary is copied out of the cache
# mount, which is not part of the image. --locked: build exactly what Cargo.lock says.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked -p mercato \
 && install -D -m 0755 target/release/mercato /out/mercato

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 mercato \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mercato --shell /usr/sbin/nologin mercato \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/mercato
# CA roots for TLS to NATS, a real card processor, etc.; taken from the builder rather than
# installed, so the runtime stage needs no package index.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/mercato /usr/local/bin/mercato

LABEL org.opencontainers.image.title="mercato" \
      org.opencontainers.image.description="Mercato e-commerce order platform: one binary, every service" \
      org.opencontainers.image.licenses="Apache-2.0"

# In a container the services must listen on every interface; a named volume mounted at the
# data directory inherits its ownership (10001) from the image.
ENV MERCATO_HOST=0.0.0.0 \
    MERCATO_DATA_DIR=/var/lib/mercato \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /var/lib/mercato
USER 10001:10001

#      gateway auth catalog order payment cart inventory psp-mock
EXPOSE 8080    8081 8082    8083  8084    8085 8086      8090

# No HEALTHCHECK: the port depends on the service the container runs (compose sets one per
# service, Kubernetes uses its probes).
ENTRYPOINT ["mercato"]
CMD ["up"]

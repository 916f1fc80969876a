#!/usr/bin/env bash
# Makes sure every service the tests need answers, starting it when it does
# not and we are allowed to (root on a Debian machine). Fails loudly
# otherwise: tests never skip a service.
set -euo pipefail

pg_ready() {
  if [ -n "${TEST_DATABASE_URL:-}" ]; then
    psql "$TEST_DATABASE_URL" -Atqc 'SELECT 1' >/dev/null 2>&1
  else
    pg_isready -q -h /var/run/postgresql && psql "postgres:///test?host=/var/run/postgresql" -Atqc 'SELECT 1' >/dev/null 2>&1
  fi
}

if ! pg_ready; then
  if [ -z "${TEST_DATABASE_URL:-}" ] && [ "$(id -u)" = 0 ] && command -v pg_ctlcluster >/dev/null; then
    echo "services: starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
    # The tests use the database "test" as their admin connection.
    if pg_isready -q -h /var/run/postgresql && ! pg_ready; then
      su postgres -c "createuser --superuser root" 2>/dev/null || true
      createdb -h /var/run/postgresql test 2>/dev/null || true
    fi
  fi
fi
if ! pg_ready; then
  echo "services: PostgreSQL is not reachable (TEST_DATABASE_URL=${TEST_DATABASE_URL:-unset}); tests need it" >&2
  exit 1
fi
echo "services: PostgreSQL ok"

# Redis for the rate-limit tests: TEST_REDIS_URL when set, otherwise the
# local one on 127.0.0.1:6379, started here (as root, no persistence) when
# it does not answer.
redis_ready() {
  if [ -n "${TEST_REDIS_URL:-}" ]; then
    [ "$(redis-cli -u "$TEST_REDIS_URL" ping 2>/dev/null)" = PONG ]
  else
    [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]
  fi
}
if ! redis_ready; then
  if [ -z "${TEST_REDIS_URL:-}" ] && [ "$(id -u)" = 0 ] && command -v redis-server >/dev/null; then
    echo "services: starting Redis on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null || true
    for _ in $(seq 1 50); do redis_ready && break; sleep 0.2; done
  fi
fi
if ! redis_ready; then
  echo "services: Redis is not reachable (TEST_REDIS_URL=${TEST_REDIS_URL:-unset}, else 127.0.0.1:6379); tests need it (make deps installs redis-server)" >&2
  exit 1
fi
echo "services: Redis ok"

# stripe-mock (Stripe's API from its fixtures) for the payment tests: they
# start their own on a free loopback port, or use STRIPE_MOCK_URL when it is
# set. `make deps` installs the pinned binary.
stripe_mock="$(dirname "$0")/../bin/stripe-mock"
if [ -n "${STRIPE_MOCK_URL:-}" ]; then
  if ! curl -fsS -u sk_test_123: "$STRIPE_MOCK_URL/v1/customers" >/dev/null 2>&1; then
    echo "services: stripe-mock does not answer at STRIPE_MOCK_URL=$STRIPE_MOCK_URL" >&2
    exit 1
  fi
elif [ ! -x "$stripe_mock" ]; then
  echo "services: bin/stripe-mock is missing; run make deps" >&2
  exit 1
fi
echo "services: stripe-mock ok"

# Sourced by scripts/dev and scripts/test: installs and starts what Airlock needs on a fresh
# machine (Debian with the Rust toolchain), and does nothing for what is already there.
# Set AIRLOCK_SKIP_INSTALL=1 to only check.

airlock_apt_updated=""
apt_install() {
    [ "${AIRLOCK_SKIP_INSTALL:-}" = 1 ] && { echo "missing: $*" >&2; return 1; }
    if [ -z "$airlock_apt_updated" ]; then
        apt-get update -qq
        airlock_apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Build tools: Pingora's dependencies need cmake.
ensure_build_tools() {
    command -v cmake >/dev/null || apt_install cmake
    command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)" >&2; return 1; }
}

# Test peers: httpbin served by gunicorn (real upstream API), psql (creates test databases).
ensure_test_peers() {
    if ! command -v gunicorn >/dev/null || ! python3 -c 'import httpbin' 2>/dev/null; then
        python3 -m pip install --quiet --disable-pip-version-check httpbin gunicorn
        hash -r
    fi
    command -v psql >/dev/null || apt_install postgresql-client
    command -v cargo-nextest >/dev/null || true
    ensure_oidc_provider
}

# OpenID Connect / OAuth 2 test peer: oidc-provider (npm) under Node.js, in e2e/oidc-provider.
# Reinstalled from package-lock.json when node_modules is missing or older than the lock file.
ensure_oidc_provider() {
    local dir
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/e2e/oidc-provider"
    command -v node >/dev/null || apt_install nodejs npm
    command -v npm >/dev/null || apt_install npm
    if [ ! -d "$dir/node_modules" ] \
        || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        [ "${AIRLOCK_SKIP_INSTALL:-}" = 1 ] && { echo "missing: $dir/node_modules (npm ci)" >&2; return 1; }
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
}

# Redis and PostgreSQL on 127.0.0.1, started if installed but not running, installed if absent.
ensure_redis() {
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/airlock.log
    for _ in $(seq 50); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "redis did not start" >&2; return 1
}

ensure_postgres() {
    if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then return 0; fi
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql
        # Trust local TCP connections, as on the development machines.
        for hba in /etc/postgresql/*/main/pg_hba.conf; do
            sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/' "$hba"
        done
    fi
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 100); do pg_isready -h 127.0.0.1 -q && break; sleep 0.1; done
    pg_isready -h 127.0.0.1 -q || { echo "postgresql did not start" >&2; return 1; }
    psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
        || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE test" >/dev/null
}

# Benchmark tools (scripts/bench): nginx (baselines A and B), wrk (peak throughput), oha
# (open-loop latency with latency correction, from crates.io), taskset (util-linux, CPU pinning).
ensure_bench_tools() {
    [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || apt_install nginx
    command -v wrk >/dev/null || apt_install wrk
    command -v taskset >/dev/null || apt_install util-linux
    if ! command -v oha >/dev/null; then
        [ "${AIRLOCK_SKIP_INSTALL:-}" = 1 ] && { echo "missing: oha (cargo install oha)" >&2; return 1; }
        echo "==> installing oha $AIRLOCK_OHA_VERSION from crates.io (once; a few minutes)"
        cargo install oha --locked --version "$AIRLOCK_OHA_VERSION" --quiet
    fi
}
AIRLOCK_OHA_VERSION=1.16.0

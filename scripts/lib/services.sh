# Sourced by scripts/quickstart and scripts/test: makes sure PostgreSQL and Redis answer on their
# default ports. Finds a running server, or starts an installed one, or installs it (Debian/Ubuntu,
# as root; otherwise prints the one command to run). Exports PG_ADMIN_URL, a superuser URL of the
# server, for the callers.

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_PORT=6379
: "${PG_ADMIN_URL:=postgres://postgres@${PG_HOST}:${PG_PORT}/postgres}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi
}

apt_install() {
  if ! command -v apt-get >/dev/null; then
    die "$1 is not installed and this is not a Debian/Ubuntu machine: install $1 and start it on 127.0.0.1"
  fi
  if [ "$(id -u)" != 0 ] && ! (command -v sudo >/dev/null && sudo -n true 2>/dev/null); then
    die "$1 is not installed. Run: sudo apt-get install -y ${*:2}  (then run this script again)"
  fi
  say "installing ${*:2} with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${@:2}" >/dev/null \
    || { as_root apt-get update >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${@:2}" >/dev/null; } \
    || die "apt-get install ${*:2} failed"
}

pg_answers() { psql "$PG_ADMIN_URL" -XtAc 'SELECT 1' >/dev/null 2>&1; }

start_postgres() {
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    for v in $(ls /etc/postgresql); do
      as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null || true
    done
  elif command -v systemctl >/dev/null; then
    as_root systemctl start postgresql 2>/dev/null || true
  fi
  for _ in $(seq 1 30); do pg_isready -h "$PG_HOST" -p "$PG_PORT" -q 2>/dev/null && return 0; sleep 1; done
  return 1
}

ensure_postgres() {
  if pg_answers; then return 0; fi
  if ! pg_isready -h "$PG_HOST" -p "$PG_PORT" -q 2>/dev/null; then
    if ! command -v pg_ctlcluster >/dev/null && ! command -v postgres >/dev/null && [ ! -d /usr/lib/postgresql ]; then
      apt_install PostgreSQL postgresql postgresql-client
    fi
    say "starting PostgreSQL"
    start_postgres || die "PostgreSQL did not start on ${PG_HOST}:${PG_PORT}"
  fi
  pg_answers && return 0
  # A fresh Debian server refuses password-less TCP logins: give the postgres role a password
  # (local development only) and use it.
  if as_root true 2>/dev/null; then
    say "setting a password for the postgres role so that TCP logins work (local development)"
    as_root runuser -u postgres -- psql -XtAc "ALTER ROLE postgres PASSWORD 'postgres'" >/dev/null \
      || die "cannot set the postgres role's password"
    PG_ADMIN_URL="postgres://postgres:postgres@${PG_HOST}:${PG_PORT}/postgres"
    pg_answers && return 0
  fi
  die "PostgreSQL runs but refuses postgres@${PG_HOST}:${PG_PORT}; set PG_ADMIN_URL to a superuser URL"
}

ensure_redis() {
  if [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then return 0; fi
  command -v redis-server >/dev/null || apt_install Redis redis-server
  say "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null \
    || die "redis-server did not start"
  for _ in $(seq 1 20); do
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.5
  done
  die "Redis did not answer on 127.0.0.1:${REDIS_PORT}"
}

# The crate's rust-version, from Cargo.toml.
rust_min_version() { sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$(dirname "${BASH_SOURCE[0]}")/../../Cargo.toml"; }

# True when `rustc` is at least the crate's rust-version.
rust_is_recent() {
  local have want
  have="$(rustc --version 2>/dev/null | awk '{print $2}')" || return 1
  want="$(rust_min_version)"
  [ -n "$have" ] || return 1
  [ -z "$want" ] && return 0
  [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1)" = "$want" ]
}

# Finds cargo, or installs the toolchain with rustup's minimal profile (this needs the internet:
# https://sh.rustup.rs). RUSTUP_INIT may name a local copy of the installer.
ensure_rust() {
  if [ -x "$HOME/.cargo/bin/cargo" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi
  if command -v cargo >/dev/null && rust_is_recent; then return 0; fi
  say "installing the Rust toolchain with rustup (minimal profile, with clippy and rustfmt; needs the internet)"
  local installer="${RUSTUP_INIT:-}"
  if [ -z "$installer" ]; then
    command -v curl >/dev/null || apt_install curl curl
    installer="$(mktemp)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs -o "$installer" \
      || die "cannot download rustup from https://sh.rustup.rs (no internet?): install Rust from https://rustup.rs, then run this again"
  fi
  sh "$installer" -y --no-modify-path --profile minimal --default-toolchain stable \
    --component clippy --component rustfmt >&2 || die "the rustup installer failed"
  PATH="$HOME/.cargo/bin:$PATH"
  export PATH
  command -v cargo >/dev/null || die "rustup ran but cargo is not in $HOME/.cargo/bin"
}

ensure_tools() {
  ensure_rust
  command -v psql >/dev/null || apt_install psql postgresql-client
  command -v redis-cli >/dev/null || apt_install redis-cli redis-tools
}

ensure_services() {
  ensure_tools
  ensure_postgres
  ensure_redis
  export PG_ADMIN_URL
  say "PostgreSQL and Redis answer"
}

# The URL of database $1 on the same server as PG_ADMIN_URL.
db_url() { printf '%s/%s' "${PG_ADMIN_URL%/*}" "$1"; }

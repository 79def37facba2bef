# Sourced by scripts that check monitoring/ (promtool check rules / test rules / check config).
# ensure_promtool: returns 0 when promtool is on PATH, installing Debian's `prometheus` package
# (which provides it) as root or with passwordless sudo if needed; otherwise returns 1 with a
# one-line reason on stderr. Idempotent. The package's service is stopped and disabled again:
# only the tool is wanted, not a Prometheus holding port 9090.

ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  local sudo=
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "promtool is not installed; run: sudo apt-get install -y prometheus" >&2; return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "promtool is not installed and apt-get is missing: install Prometheus's promtool" >&2; return 1
  fi
  local install="$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus"
  $install >/dev/null 2>&1 || { $sudo apt-get update -qq >/dev/null 2>&1 && $install >/dev/null 2>&1; } || {
    echo "apt-get install prometheus failed (it provides promtool)" >&2; return 1
  }
  if command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl stop prometheus >/dev/null 2>&1 || true
    $sudo systemctl disable prometheus >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null 2>&1 || { echo "prometheus installed but promtool is not on PATH" >&2; return 1; }
}

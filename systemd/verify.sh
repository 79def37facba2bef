#!/usr/bin/env bash
# Checks the systemd units in this directory without installing them.
#
#   systemd/verify.sh PATH_TO_MDINGEST        e.g. systemd/verify.sh target/release/mdingest
#
# `systemd-analyze verify` fails when an ExecStart= binary does not exist, and
# /usr/local/bin/mdingest usually does not on a build machine: so the units are copied to a
# temporary directory with that path rewritten to $1, then
#   1. `systemd-analyze verify` runs on the three copies; any output line is an error, except
#      one about the mdingest user/group not existing on this machine (noted, not fatal);
#   2. `systemd-analyze security --offline=true` scores the services (systemd >= 252) and the
#      script fails if an overall exposure is above MAX_EXPOSURE (default 3.0).
# Exit status: 0 all good, 1 a check failed, 2 usage or missing tools.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
units=(mdingest.service mdingest-backfill.service mdingest-backfill.timer)
scored=(mdingest.service mdingest-backfill.service)
max_exposure=${MAX_EXPOSURE:-3.0}

if [[ $# -ne 1 ]]; then
    echo "usage: $0 PATH_TO_MDINGEST_BINARY" >&2
    exit 2
fi
if [[ ! -f $1 || ! -x $1 ]]; then
    echo "verify.sh: $1 is not an executable file" >&2
    exit 2
fi
bin=$(realpath -- "$1")
if ! command -v systemd-analyze >/dev/null; then
    echo "verify.sh: systemd-analyze not found (package systemd)" >&2
    exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mdingest-units.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT

# The binary's path as a literal sed replacement ('|' is the delimiter; escape \ | &).
repl=$(printf '%s' "$bin" | sed -e 's/[\\|&]/\\&/g')
for u in "${units[@]}"; do
    sed -e "s|/usr/local/bin/mdingest|$repl|g" "$here/$u" >"$tmp/$u"
done

export SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat
status=0

echo "== systemd-analyze verify (ExecStart binary: $bin)"
set +e
out=$(cd "$tmp" && systemd-analyze verify "${units[@]/#/$tmp/}" 2>&1)
rc=$?
set -e
errors=0
while IFS= read -r line; do
    [[ -z $line ]] && continue
    # The unit runs as User=mdingest/Group=mdingest, which may not exist on this machine.
    if grep -Eqi '(user|group)[^/]*\bmdingest\b' <<<"$line" &&
        grep -Eqi 'not exist|unknown|resolve|not found|no such|invalid' <<<"$line"; then
        echo "   note (missing user/group, expected before useradd): $line"
    else
        echo "   ERROR: $line"
        errors=$((errors + 1))
    fi
done <<<"$out"
if ((errors > 0)); then
    echo "verify: $errors error line(s) (exit status $rc)"
    status=1
elif ((rc != 0)) && [[ -z $out ]]; then
    echo "verify: exit status $rc without any message"
    status=1
else
    echo "verify: OK"
fi

echo "== systemd-analyze security --offline=true"
version=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
if ! [[ $version =~ ^[0-9]+$ ]] || ((version < 252)); then
    echo "security: skipped: systemd ${version:-?} has no --offline (needs >= 252)"
else
    for u in "${scored[@]}"; do
        set +e
        report=$(systemd-analyze security --offline=true --no-pager "$tmp/$u" 2>&1)
        set -e
        score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p' <<<"$report" | tail -n 1)
        if [[ -z $score ]]; then
            echo "security: cannot parse the overall exposure of $u; skipping this check. Output:"
            sed 's/^/   /' <<<"$report"
        elif awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s + 0 > m + 0) }'; then
            echo "security: $u: exposure $score is above $max_exposure:"
            grep '✗' <<<"$report" | sed 's/^/   /' || true
            status=1
        else
            echo "security: $u: exposure $score (limit $max_exposure) OK"
        fi
    done
fi

exit "$status"

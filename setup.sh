#!/usr/bin/env bash
# Set up mkv on a Debian machine and either run a local cluster or run every test.
#   bash setup.sh cluster   install what is missing, then 3 volumes (3001-3003, data in ./data)
#                           and the master on 3000 (S3 alone also on 3010, admin on 3020), in the foreground;
#                           Ctrl-C stops everything
#   bash setup.sh test      install the same plus test dependencies, then run every test
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-}
case "$mode" in cluster|test) ;; *) echo "usage: bash setup.sh cluster|test" >&2; exit 2;; esac

apt_install() {
    [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then apt_install nginx; fi
if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3 python3-venv
fi
if [ "$mode" = test ]; then
    command -v wrk >/dev/null || apt_install wrk
    # PostgreSQL's server programs for the PostgreSQL index's tests (each runs its own server)
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null \
        || apt_install postgresql
    # Go mkv and goleveldb for the compatibility tests, from Debian's packages (no module download)
    command -v go >/dev/null && [ -d /usr/share/gocode/src/github.com/syndtr/goleveldb ] \
        && [ -d /usr/share/gocode/src/github.com/google/uuid ] \
        || apt_install golang-go golang-github-syndtr-goleveldb-dev golang-github-google-uuid-dev
    # the status page's test loads it in a real headless browser
    command -v chromium >/dev/null || apt_install chromium
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
extras=""; [ "$mode" = test ] && extras="[test]"
.venv/bin/pip install -q --disable-pip-version-check -e ".$extras"

if [ "$mode" = test ]; then
    .venv/bin/ruff check .
    exec .venv/bin/python -m pytest -q "${@:2}"
fi

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for port in 3001 3002 3003; do
    .venv/bin/mkv volume "data/volume$port" -port "$port" & pids+=($!)
done
.venv/bin/mkv -volumes localhost:3001,localhost:3002,localhost:3003 -db data/indexdb -s3_port 3010 -admin_port 3020 server &
pids+=($!)
wait -n

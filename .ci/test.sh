#!/usr/bin/env bash
# The test command of otel-jobs (the README's "run the tests"): sets up a fresh Debian machine
# (Prometheus, promtool and amtool from Debian; a virtualenv with the package and its test
# extras), then runs ruff, mypy and the whole pytest suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v prometheus-pushgateway >/dev/null 2>&1 || missing+=(prometheus-pushgateway)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# Each extra the README names resolves on a fresh virtualenv (pip dry runs, nothing installed).
.venv/bin/python .ci/extras_resolve.py

.venv/bin/ruff check otel_jobs tests bench examples dashboards deploy
.venv/bin/ruff format --check otel_jobs tests bench examples dashboards deploy
.venv/bin/mypy
# the documentation site, built into a temporary directory: no broken link, no page out of the nav
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
.venv/bin/python -m pytest "$@"

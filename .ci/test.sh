#!/usr/bin/env bash
# The test command of otel-jobs (the README's "run the tests"): sets up a fresh Debian machine
# (Prometheus, promtool and amtool from Debian; a virtualenv with the package and its test
# extras), then runs ruff, mypy and the whole pytest suite (extra arguments go to pytest), then
# the Celery and RQ tests against the oldest Celery and RQ supported, in .venv-oldest.
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

# The Celery and RQ tests again, against the oldest Celery and RQ otel-jobs supports
# (otel_jobs/support.py), in a virtualenv of their own: about 2 minutes here (Celery 5.3: 90 s,
# RQ 1.16: 30 s). Deselected: what RQ 1.16 does not have (a job returning Retry, RQ_KEY_PREFIX).
[ -x .venv-oldest/bin/python ] || "$PYTHON" -m venv .venv-oldest
.venv-oldest/bin/python -m pip install --quiet --upgrade pip
.venv-oldest/bin/python -m pip install --quiet -e '.[celery,rq]' \
  "$(.venv/bin/python -c 'from otel_jobs.support import oldest; print(oldest("celery", "[redis]"))')" \
  "$(.venv/bin/python -c 'from otel_jobs.support import oldest; print(oldest("rq"))')" \
  pytest pytest-asyncio opentelemetry-test-utils opentelemetry-proto grpcio \
  opentelemetry-instrumentation-celery pyyaml
.venv-oldest/bin/python -m pytest -p no:cacheprovider \
  tests/integrations/test_celery.py tests/integrations/test_rq.py tests/integrations/test_rq_audit.py \
  tests/integrations/test_rq_horse.py \
  --deselect tests/integrations/test_rq.py::test_retry \
  --deselect tests/integrations/test_rq.py::test_rq_key_prefix_set_after_instrument_is_honoured

# The watchdog's bytecode-dependent diagnoses (what a blocked frame waits on, read from its
# opcodes; the event-loop probe's asyncio internals) on the other CPythons this machine's pyenv
# has (3.10, 3.12, 3.13; Debian bookworm and PyPI offer none): the package and pytest only,
# about 30 s each. Skipped where pyenv or those versions are missing.
pyenv_root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for other in "$pyenv_root"/versions/3.10.*/bin/python "$pyenv_root"/versions/3.12.*/bin/python "$pyenv_root"/versions/3.13.*/bin/python; do
  [ -x "$other" ] || continue
  venv=".venv-$("$other" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [ -x "$venv/bin/python" ] || "$other" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet -e . pytest
  "$venv/bin/python" -m pytest -p no:cacheprovider tests/watchdog/test_waits.py \
    tests/watchdog/test_loop_probe.py tests/watchdog/test_loop_blocked.py
done

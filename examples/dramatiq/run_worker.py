"""Start the Dramatiq worker with otel-jobs: ``python run_worker.py tasks --processes 2``.

Dramatiq's parent process imports none of your modules, so ``instrument()`` goes here, before
Dramatiq forks its worker processes: this process then serves ``/metrics`` for all of them.
Every argument is Dramatiq's own.
"""

import otel_jobs

otel_jobs.instrument(
    # The stuck actor never heartbeats: call it stalled after 5 s instead of the default 600.
    jobs={"wait_for_approval": {"heartbeat_timeout": 5}},
)

from dramatiq.cli import main  # noqa: E402  (after instrument(): the fork starts from here)

raise SystemExit(main())

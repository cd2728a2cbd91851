"""Start the Dramatiq worker with otel-jobs: ``python run_worker.py tasks --processes 2``.

Dramatiq's parent process imports none of your modules, so otel-jobs is started here, before
Dramatiq forks its worker processes: this process then serves ``/metrics`` for all of them.
``main`` takes the options of ``otel_jobs.instrument()`` and then runs Dramatiq's own command
line with this script's arguments (a reload with SIGHUP re-executes this script).
"""

from otel_jobs.integrations.dramatiq import main

raise SystemExit(
    main(
        # The stuck actor never heartbeats: call it stalled after 5 s instead of the default 600.
        jobs={"wait_for_approval": {"heartbeat_timeout": 5}},
    )
)

"""``python -m otel_jobs``: the same as the ``otel-jobs`` command."""

from .cli import main

raise SystemExit(main())

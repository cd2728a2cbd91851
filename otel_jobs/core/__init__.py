"""The small core of otel-jobs: a run, the in-flight table, the watchdog, the signals it emits.

Framework integrations (:mod:`otel_jobs.integrations`) and outbound-call checks
(:mod:`otel_jobs.outbound`) are thin adapters around it.
"""

"""One module per rule group, each declaring ``GROUP`` (:class:`otel_jobs.rules.promql.Group`).

Every module of this package is found and rendered; nothing lists them (see
:mod:`otel_jobs.rules`).
"""

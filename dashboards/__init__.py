"""otel-jobs Grafana dashboards: the generator (build), the live stack (live), the preview (preview)."""

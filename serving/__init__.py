"""Serving: the BentoML service and everything behind it, grouped by concern.

- ``serving.service``: the BentoML service (the entry point; assembles the parts below);
  ``serving.config``: its settings, read and validated once at start.
- ``serving/http/``: the HTTP edge: the guard (auth, limits, audit), request parsing and the
  API's request/response models, OpenAPI and the docs page, the HTTP server's limits.
- ``serving/scoring/``: the served models: loading them, scoring records, micro-batching and
  the scoring process.
- ``serving/batch/``: batch scoring of files without HTTP (``refracture predict``), on pandas
  or Spark.
- ``serving/monitoring/``: the input and prediction drift metrics on ``/metrics``.
- ``serving/auth/``: who is calling, without HTTP: the identity provider's keys, token
  checks, the registry of named clients, per-client rate limits.
- ``serving/ui/``: the clinician review page at ``/ui``.
"""

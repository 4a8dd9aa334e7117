"""The prediction log: every prediction the product makes, remembered, and the outcomes of
a later export linked to it.

One concern used by serving, batch scoring and the command line, so it sits below them
(and above ``modelstore`` and ``features``, whose labels it uses to link outcomes):

- ``settings``: what a deployment configures (store URL, site secret, inputs on/off,
  retention, spool folder, queue), read and checked once;
- ``keys``: the keyed hash of a procedure key (HMAC-SHA256 with the site secret);
- ``schema`` and ``migrations/``: the tables, versioned by Alembic;
- ``store``: ``PredictionStore``, the database (SQLite embedded, PostgreSQL deployed);
- ``rows``: what one prediction is, as rows (``ModelScores``, ``prediction_rows``);
- ``writer``: ``PredictionWriter``, the batched writer thread off the answer's path, with
  a local spool when the store is unreachable;
- ``linkage``: outcomes of a later export linked to logged predictions.

Retention: ``PredictionStore.prune`` deletes what is older than the configured period
(``refracture predictions prune``).

Nothing here runs on import.
"""

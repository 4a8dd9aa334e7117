"""The served models: resolving and loading them (MLflow registry or a Bento), and scoring
flat records into answers (risk curves, bands, missing inputs, explanations). Knows nothing
of HTTP: the HTTP edge (``serving/http/``) and the batch engines (``serving/batch/``) both
call it."""

"""Who a caller is, without HTTP: the identity provider's signing keys (``jwks``), bearer
token verification (``tokens``), the registry of named clients and their keys (``clients``)
and per-client rate limits (``limits``). The HTTP edge (``serving.http``) turns these into
the guard's ``Caller`` or ``Refusal``; nothing here imports it."""

"""The HTTP edge of the service: the guard (auth, body limit, audit line), request parsing
and validation, the API's request/response models, micro-batching of concurrent requests
and the worker's scoring process, OpenAPI, the docs page, the HTTP server's limits."""

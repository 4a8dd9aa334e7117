"""The strict floor for the serving benchmark: ``bench_serving_bare.BareCached`` (the same
echo, request model and cached schema) on the service's own HTTP server classes
(``serving.http.server.install``: the request-head limits, the bounded metric labels and
BentoML's request timeout without its leak of one live timer per request).

With stock BentoML the echo floor slows down as it serves: each request's timer keeps its
objects alive for the whole timeout (120 s), which every full garbage collection walks
(bench/README.md, "Soak"). Over five interleaved runs that took the stock floor from 813 to
508 req/s, while the service, which has the fix, did not slow down. This floor has the same
fix, so the ratios against it are not flattered by the floor's own decline.

    bentoml serve bench.bench_serving_floor_fixed:BareFixed --port 3003
"""

from __future__ import annotations

import bentoml

from bench.bench_serving_bare import WORKERS, CachedBody, _maybe_freeze_gc
from serving.http.server import install

install()  # as serving.service does where the service is defined, before the worker builds its server


@bentoml.service(name="bare-echo-fixed", workers=WORKERS, traffic={"timeout": 120})
class BareFixed:
    """Echo with the request model's schema cached, on the service's server classes."""

    def __init__(self) -> None:
        _maybe_freeze_gc()

    @bentoml.api(route="/echo", input_spec=CachedBody, output_spec=CachedBody)
    async def echo(self, body):
        return body

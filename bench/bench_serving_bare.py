"""The floor for the serving benchmark: bare BentoML endpoints with the same input model
as ``POST /predict`` (one ``ProcedureRecord`` or a list, parsed and validated by BentoML
with the same pydantic models) that only return their input. No auth, no audit, no
contract checks, no model.

- ``Bare``: stock BentoML. Note: for a root-model input or output (a record *or a list*)
  BentoML 1.4 regenerates the model's whole JSON schema on every request
  (``IORootModel.model_validate_json`` and ``IOMixin.mime_type`` call
  ``model_json_schema()``), ~15 ms each for this 48-field record on the bench machine.
- ``BareCached``: the same with that schema computed once. The service itself never pays
  that cost (it parses its own body and returns a ready ``Response``), so this is the
  fair floor and the one the targets are measured against.

    bentoml serve bench.bench_serving_bare:Bare --port 3001
    bentoml serve bench.bench_serving_bare:BareCached --port 3002
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Any

import bentoml
from _bentoml_sdk.io_models import IORootModel
from pydantic import Field

from serving.http.schemas import ProcedureRecord

Body = Annotated[ProcedureRecord | list[ProcedureRecord], Field(description="One record or a list.")]
WORKERS = int(os.environ.get("REFRACTURE_WORKERS", "1") or 1)


def _maybe_freeze_gc() -> None:
    """With REFRACTURE_GC_FREEZE=1, move everything alive after start out of the garbage
    collector's view (``gc.freeze``), as the service does: full collections then no
    longer walk the imported libraries on every gen-2 pass."""
    if os.environ.get("REFRACTURE_GC_FREEZE", "") == "1":
        import gc

        gc.collect()
        gc.freeze()


@bentoml.service(name="bare-echo", workers=WORKERS, traffic={"timeout": 120})
class Bare:
    """Echo: parse the record(s) with the request model and send them back."""

    def __init__(self) -> None:
        _maybe_freeze_gc()

    @bentoml.api(route="/echo")
    async def echo(self, body: Body, /) -> Body:
        return body


class CachedBody(IORootModel[Body]):  # type: ignore[valid-type]
    """The same root model, with its JSON schema computed once instead of per request."""

    @classmethod
    @functools.cache
    def _schema(cls) -> dict[str, Any]:
        return super().model_json_schema()

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if args or kwargs:
            return super().model_json_schema(*args, **kwargs)
        return cls._schema()


CachedBody.__root_input__ = True


@bentoml.service(name="bare-echo-cached", workers=WORKERS, traffic={"timeout": 120})
class BareCached:
    """Echo with the request model's schema cached: the floor the targets use."""

    def __init__(self) -> None:
        _maybe_freeze_gc()

    @bentoml.api(route="/echo", input_spec=CachedBody, output_spec=CachedBody)
    async def echo(self, body: Any) -> Any:
        return body

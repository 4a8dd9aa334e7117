"""FHIR R4 in and out: the data contract's mapping to FHIR (part of the contract layer).

It knows fields, codes and units, not HTTP: the service's FHIR endpoint, the CDS Hooks
service and the Bulk reader all call the same pure functions below, and every record they
produce goes through the contract checker ``/predict`` uses (``features.records``).

Modules
-------
``codes``       code systems, codes and the public page each one was checked against
``mapping``     THE table: each record field <-> a FHIR element, its codes, UCUM unit and rule
``units``       UCUM conversion (ucumvert): ``quantity_value(quantity, wanted)``, ``UnitError``
``parse``       FHIR -> records + problems (FHIRPath ``expression`` per problem): the public API;
                ``read`` (problems, sources, dates, codings), ``history`` (Conditions,
                MedicationStatements) and ``measures`` (Observations) are its parts
``bulk``        a Bulk Data export folder (NDJSON) -> records + problems by file and line;
                ``ndjson`` (files, lines, refused lines) is shared by its two readers: the
                per-resource one (the reference) and ``bulk_fast`` (the default: the same
                records and problems, Observations decoded by ``fast_observations``)
``export``      raw tables -> FHIR resources, Bundles (``refracture fhir-export``)
``codesystem``  the project CodeSystem resource the service publishes
``docs``        docs/fhir.md (``refracture fhir-docs``)

API (all pure; ``now`` is the request time, default now in UTC: anything dated after it is refused)
---------------------------------------------------------------------------------------------------
``parse.parse_bundle(bundle: dict, *, now: datetime | None = None, validate: bool = True) -> FhirRecords``
    A Bundle of type ``collection`` or ``transaction`` holding one patient's resources (the
    ``POST /fhir/$refracture-risk`` body). ``validate`` checks every entry with the FHIR R4
    models first. Expressions start with ``Bundle.entry[i].resource``.
``parse.parse_prefetch(prefetch: dict[str, Any], *, now=None, validate=True) -> FhirRecords``
    CDS Hooks prefetch: key -> Bundle (searchset) or one resource or None. Expressions start
    with ``prefetch.<key>``.
``parse.parse_resources(items, *, now=None, validate=False, one_patient=True, source_of=None, check=True) -> FhirRecords``
    The core: resources, or (resource, FHIRPath base[, fullUrl]) tuples. With
    ``one_patient=False`` resources are grouped by patient (Bulk).
``bulk.read_bulk_ndjson(directory: Path, *, now=None, validate=False, workers=None, fast=True) -> FhirRecords``
    Every ``*.ndjson`` file of a folder; problems carry ``source='<file>:<line>'``.
    ``fast=False`` (or ``validate=True``) reads every resource with the per-resource parser.
``parse.record_frame(parsed: FhirRecords) -> pandas.DataFrame``
    The accepted records as the flat frame batch scoring takes.
``parse.model_problems(resource: dict, base: str) -> list[FhirProblem]``
    One resource against its FHIR R4 model (use it on every resource the service writes).
``codesystem.project_code_system() -> dict``
    The project CodeSystem resource (JSON), validated.

``FhirRecords`` (``parse``)
    ``records``: nested records (the ``/predict`` shape), one per completed vertebral
    augmentation Procedure; ``sources``: one ``RecordSource`` per record (``patient`` and
    ``procedure`` as ``Type/id``, ``elements``: record path -> FHIRPath, ``basis``: the
    ``Type/id`` of every resource a value came from, for ``RiskAssessment.basis``;
    ``source``: file:line for Bulk); ``problems``: ``FhirProblem(expression, message,
    severity 'error'|'warning', code = OperationOutcome issue type, record index or None,
    source)``; ``errors``; ``refused`` (record indexes); ``input_refused`` (an error no record
    owns: e.g. two patients); ``no_procedure`` (a patient without a vertebral augmentation:
    CDS Hooks answers with no cards); ``accepted()`` -> (records, sources) to score; ``ok``.

An endpoint answers ``input_refused`` or a refused record with an OperationOutcome built
from ``errors`` (issue.severity, issue.code, issue.expression = [problem.expression],
issue.diagnostics = problem.message); warnings may go in the answer's OperationOutcome.
"""

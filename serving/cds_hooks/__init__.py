"""CDS Hooks 2.0: the refracture risk as cards in the clinician's chart (docs/cds-hooks.md).

``settings`` (public URL, trusted clients, CORS origins), ``client_auth`` (the CDS client's
signed JWT: the ``/cds-services`` route's authenticator), ``prefetch`` (templates, what a call
lacks, fetching it from the client's FHIR server), ``cards`` (the cards), ``cors`` (browser
clients), ``app`` (discovery and the service, mounted at ``/cds-services``)."""

"""FHIR on the serving side: the RiskAssessment resources the service and the batch
engines write (``risk_assessment``). The mapping from FHIR input to records is the contract
layer's (``features.fhir``)."""

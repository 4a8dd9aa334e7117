"""Serving: the BentoML service, request/response models and the clinician page."""

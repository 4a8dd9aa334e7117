"""What the service exports for monitoring on ``/metrics``: input and prediction drift."""

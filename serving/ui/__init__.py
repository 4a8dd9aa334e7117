"""The clinician review page, mounted at /ui by the service. Static assets only: no CDN."""

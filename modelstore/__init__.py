"""The model store layer: where models are tracked and registered, and how they are named.

Sits between ``features`` (the data contract, below) and ``training`` / ``serving``
(above, independent of each other): both need the tracking store, the registry's naming
rule, the risk bands and the configuration error type, and neither may import the other.
Nothing here runs on import.
"""

"""Raw data contract, feature pipelines, labels and the cohort simulator.

Importing this package has no side effects: no files are read, no logging is configured.
"""

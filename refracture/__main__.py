"""``python -m refracture ...``, and the script ``spark-submit`` runs (docs/deployment.md)."""

from refracture.cli import main

if __name__ == "__main__":
    main()

"""A real FHIR R4 server for the tests: Medplum's FHIR REST engine (npm ``@medplum/fhir-router``,
Apache-2.0: reads, FHIR search with paging, transactions) over its in-memory repository, behind a
bearer token (``tests/support/fhir_server/server.cjs``). No full FHIR server installs from the
registries this project may use (PyPI, npm, Debian; HAPI and Blaze need Maven Central or
Docker, Medplum's own server PostgreSQL and Redis): this is the FHIR engine of one, without its
storage, auth and UI.

The npm packages (pinned by ``fhir_server/package-lock.json``) are installed once per lock into
``~/.cache/refracture-tests/`` with ``npm ci``; ``FhirServer`` starts ``node server.cjs`` on
127.0.0.1 (a free port), loads resources with a FHIR transaction, and stops it on exit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

PACKAGE = Path(__file__).resolve().parent / "fhir_server"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "refracture-tests"


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def installed() -> Path:
    """The folder whose ``node_modules`` holds the pinned packages (installed on first use)."""
    lock = (PACKAGE / "package-lock.json").read_bytes()
    folder = CACHE / f"fhir-server-{hashlib.sha256(lock).hexdigest()[:12]}"
    if (folder / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(PACKAGE / name, folder / name)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, check=True,
                   capture_output=True, timeout=600)
    return folder


class FhirServer:
    """``node server.cjs`` on 127.0.0.1; ``url`` is its FHIR base, ``token`` the bearer token it wants."""

    def __init__(self, token: str):
        self.token = token
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "FhirServer":
        modules = installed() / "node_modules"
        env = {**os.environ, "NODE_PATH": str(modules), "FHIR_TOKEN": self.token, "FHIR_PORT": "0"}
        self.proc = subprocess.Popen(["node", str(PACKAGE / "server.cjs")], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.time() + 120
        line = ""
        while time.time() < deadline and not line.startswith("listening"):
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"the FHIR server did not start: {self.proc.stdout.read()[-2000:]}")
        if not line.startswith("listening"):
            self.__exit__()
            raise TimeoutError("the FHIR server did not start within 120 s")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/fhir"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def load(self, resources: list[dict[str, Any]]) -> None:
        """Store ``resources`` (with their ids) by one FHIR transaction of PUTs."""
        bundle = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                            for r in resources]}
        r = httpx.post(self.url, json=bundle, headers={"Authorization": f"Bearer {self.token}",
                                                       "Content-Type": "application/fhir+json"}, timeout=60)
        r.raise_for_status()
        failed = [e["response"] for e in r.json().get("entry", []) if not str(e["response"]["status"]).startswith("2")]
        assert not failed, failed[:3]

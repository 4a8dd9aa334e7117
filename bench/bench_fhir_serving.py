"""FHIR and CDS Hooks serving benchmark (issue 19): requests/s of ``/fhir/$refracture-risk`` and
of the CDS Hooks service with complete prefetch, against ``/predict`` and ``/explain`` on the
same procedure, the same server and in the same runs.

    .venv/bin/python bench/bench_fhir_serving.py [--duration 15] [--repeats 3] [--concurrency 1,8,32]

1. Trains (once) the small champions of ``bench/bench_serving.py`` (``bench/out/serving-store``).
2. Makes a CDS client: an ES384 key pair (the algorithm CDS Hooks recommends, with RS384), the
   clients file naming its public key, and one signed JWT per request to come (a token serves
   once: its ``jti`` is refused the second time), valid for the length of the benchmark.
3. Starts ``refracture serve`` on 127.0.0.1 with that client and drives, with ``wrk``, one
   target after the other for each run and concurrency (so load from other users of the
   machine hits them alike): ``/predict`` (the documented FHIR example procedure as the
   service's JSON record), ``/explain`` (the same), ``/fhir/$refracture-risk`` (the same
   procedure as a FHIR Bundle) and ``/cds-services/refracture-risk`` (a patient-view call whose
   prefetch holds the same resources; a fresh token per request). Medians over ``--repeats``,
   and the same-run ratio of each to ``/predict``.

Results go to ``bench/out/fhir-serving-*.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from bench.bench_serving import KEY, OUT, ensure_store, run_wrk, start, stop, tree_cpu_s  # noqa: E402

ISSUER = "https://ehr.bench.example"
#: Tokens made per second of wrk run (above any rate this machine serves; unused ones are harmless).
TOKENS_PER_S = 1500
#: Seconds of the warm-up run of each target.
WARM_UP_S = 2

LUA_FIXED = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "%(media)s"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.body = [[%(body)s]]
"""

# One token per request: thread k of n takes tokens k, k+n, k+2n, ... (wrk gives each thread its
# own Lua state), so no two requests share a jti.
LUA_TOKENS = """
local threads_made = 0
function setup(thread)
  thread:set("index", threads_made)
  threads_made = threads_made + 1
end
function init(args)
  tokens = {}
  for line in io.lines("%(tokens)s") do tokens[#tokens + 1] = line end
  step = %(threads)d
  position = index + 1
end
function request()
  local token = tokens[position]
  position = position + step
  if position > #tokens then position = index + 1 end
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token},
                    [[%(body)s]])
end
"""


def example_inputs() -> tuple[dict, dict, dict]:
    """The documented FHIR example procedure as a Bundle, as the service's JSON record (read by
    the mapping, as the FHIR endpoint reads it) and as a CDS Hooks patient-view call."""
    from features.fhir.docs import example_bundle
    from features.fhir.parse import parse_bundle

    bundle = example_bundle()
    parsed = parse_bundle(bundle)
    assert parsed.ok, parsed.problems
    record = parsed.records[0]
    resources = [e["resource"] for e in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")

    def search(rtype: str) -> dict:
        return {"resourceType": "Bundle", "type": "searchset",
                "entry": [{"resource": r} for r in resources if r["resourceType"] == rtype]}

    call = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/bench", "patientId": patient["id"]},
            "prefetch": {"patient": patient, "procedures": search("Procedure"), "observations": search("Observation"),
                         "conditions": search("Condition"), "medications": search("MedicationStatement")}}
    return record, bundle, call


def make_client(work: Path):
    """An ES384 key pair and the clients file naming its public key."""
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-384", parameters={"kid": "bench-1", "alg": "ES384", "use": "sig"})
    (work / "clients.json").write_text(json.dumps({"clients": [
        {"name": "bench-ehr", "issuer": ISSUER, "jwks": {"keys": [key.as_dict(private=False)]}}]}))
    return key


def sign_tokens(key, audience: str, n: int) -> list[str]:
    """``n`` one-use tokens for ``audience``, valid for the next 55 minutes."""
    from joserfc import jwt

    now = int(time.time())
    return [jwt.encode({"alg": "ES384", "typ": "JWT", "kid": "bench-1"},
                       {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + 3300, "jti": str(uuid.uuid4())},
                       key, algorithms=["ES384"]) for _ in range(n)]


class TokenScripts:
    """A wrk script per CDS run, each over tokens no other run uses: every wrk run starts at the
    top of its file, so runs sharing one file would replay each other's tokens (refused, 401,
    and counted as cheap answers)."""

    def __init__(self, tokens: list[str], work: Path, body: str):
        self.tokens, self.work, self.body, self.used = tokens, work, body, 0

    def next(self, n: int) -> Path:
        if self.used + n > len(self.tokens):
            raise RuntimeError("not enough signed tokens for the runs")
        part = self.work / f"tokens-{self.used}.txt"
        part.write_text("\n".join(self.tokens[self.used:self.used + n]) + "\n")
        self.used += n
        script = self.work / f"cds-{self.used}.lua"
        script.write_text(LUA_TOKENS % {"tokens": part, "threads": 2, "body": self.body})
        return script


def lua(s: str) -> str:
    assert "]]" not in s
    return s


def bench(duration: int, repeats: int, concurrency: tuple[int, ...], tag: str) -> dict:
    from serving_support import free_port, store_env

    store = ensure_store()
    work = Path(tempfile.mkdtemp(prefix="bench-fhir-"))
    record, bundle, call = example_inputs()
    key = make_client(work)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    per_run = TOKENS_PER_S * duration
    n_tokens = per_run * repeats * len(concurrency) + TOKENS_PER_S * WARM_UP_S
    print(f"signing {n_tokens} ES384 tokens ...", flush=True)
    cds_scripts = TokenScripts(sign_tokens(key, f"{url}/cds-services/refracture-risk", n_tokens), work,
                               lua(json.dumps(call)))
    scripts = {}
    for name, media, body in (("predict", "application/json", record), ("explain", "application/json", record),
                              ("fhir", "application/fhir+json", bundle)):
        scripts[name] = work / f"{name}.lua"
        scripts[name].write_text(LUA_FIXED % {"media": media, "key": KEY, "body": lua(json.dumps(body))})
    targets = {"predict": f"{url}/predict", "explain": f"{url}/explain", "fhir": f"{url}/fhir/$refracture-risk",
               "cds": f"{url}/cds-services/refracture-risk"}
    env = store_env(store, REFRACTURE_API_KEY=KEY, REFRACTURE_AUDIT_SALT="bench", REFRACTURE_AUDIT_LOG=str(work / "audit.jsonl"),
                    REFRACTURE_CDS_CLIENTS=str(work / "clients.json"), REFRACTURE_PUBLIC_URL=url)
    svc = start([sys.executable, "-c", "from refracture.cli import main; main()", "serve", "--port", str(port)], env,
                work / "service.log", url, timeout_s=600)
    runs: dict = {t: {c: [] for c in concurrency} for t in targets}
    try:
        for name, target in targets.items():  # warm-up (and a check that every target answers 200)
            script = cds_scripts.next(TOKENS_PER_S * WARM_UP_S) if name == "cds" else scripts[name]
            warm = run_wrk(target, 2, WARM_UP_S, script)
            if warm["non_2xx"]:
                raise RuntimeError(f"{name}: {warm['non_2xx']} non-2xx answers in the warm-up; see {work / 'service.log'}")
        for r in range(repeats):
            for c in concurrency:
                for name, target in targets.items():
                    cpu_before = tree_cpu_s(svc.pid)
                    script = cds_scripts.next(per_run) if name == "cds" else scripts[name]
                    result = run_wrk(target, c, duration, script)
                    result["server_cores"] = round((tree_cpu_s(svc.pid) - cpu_before) / duration, 2)
                    runs[name][c].append(result)
                    print(f"[{tag}] run {r + 1} {name:8s} c={c:2d}: p50 {result['p50_ms']:8.1f} ms  p99 "
                          f"{result['p99_ms']:8.1f} ms  {result['rps']:8.1f} req/s  non-2xx {result['non_2xx']}  "
                          f"server cores {result['server_cores']:.2f}", flush=True)
    finally:
        stop(svc)
        shutil.rmtree(work, ignore_errors=True)
    ratios = {t: {c: [x["rps"] / p["rps"] for x, p in zip(runs[t][c], runs["predict"][c])] for c in concurrency}
              for t in targets}
    med = {t: {c: {**{k: statistics.median(x[k] for x in runs[t][c])
                      for k in ("p50_ms", "p99_ms", "rps", "non_2xx", "server_cores")},
                   "rps_vs_predict": statistics.median(ratios[t][c]),
                   "rps_vs_predict_runs": [round(v, 2) for v in ratios[t][c]]}
               for c in concurrency} for t in targets}
    return {"tag": tag, "runs": runs, "median": med}


def table(result: dict) -> str:
    m = result["median"]
    lines = ["| clients | target | p50 ms | p99 ms | req/s | ÷ /predict (runs) | server cores |", "|---|---|---|---|---|---|---|"]
    for c in sorted(m["predict"]):
        for name, x in ((t, m[t][c]) for t in m):
            lines.append(f"| {c} | {name} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {x['rps']:.1f} | "
                         f"{x['rps_vs_predict']:.2f} ({', '.join(map(str, x['rps_vs_predict_runs']))}) | "
                         f"{x['server_cores']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", default="1,8,32", help="wrk connections, comma-separated")
    ap.add_argument("--tag", default="default")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    result = {"machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
                          "started": dt.datetime.now(dt.timezone.utc).isoformat()}, "args": vars(args)}
    result["http"] = bench(args.duration, args.repeats, tuple(int(c) for c in args.concurrency.split(",")), args.tag)
    result["machine"]["load_avg_end"] = os.getloadavg()
    print()
    print(table(result["http"]))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"fhir-serving-{args.tag}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

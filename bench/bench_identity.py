"""Identity benchmark (issue 20): token checking vs API keys, and revoking a key under load.

    .venv/bin/python bench/bench_identity.py [--duration 15] [--repeats 3] [--rotation-s 20]

Starts, on 127.0.0.1, a real OpenID Provider (oidc-provider on Node,
tests/support/oidc_provider.py) and one ``refracture serve`` that accepts both its tokens
and named clients' keys (``REFRACTURE_CLIENTS_FILE``), with the small champions of
``bench/out/serving-store`` (trained once, as bench_serving.py does).

1. **Token vs key**, same server, same run: ``wrk`` posts the example record to
   ``/predict`` at 32 connections, alternately with a named client's API key and with a
   system's client-credentials access token (one token, reused as a system would until it
   expires), ``--repeats`` times each; medians of requests/s and their ratio (target: the
   token >= 0.95x the key).
2. **Rotation**: 32 clients (4 named clients, 8 connections each) and one more connection
   with a fifth client's key send ``/predict`` as fast as they can; after a few seconds
   ``refracture clients revoke`` revokes the fifth; reported: seconds from the revocation
   (the registry file written) to that key's first 401 (target: <= 5 s), and the other 32
   clients' requests that did not get 200 (target: 0).

Results go to ``bench/out/identity-<part>.json`` (``--part all``, ``speed`` or ``rotation``); a summary on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_serving import LUA, OUT, ensure_store, run_wrk, start, stop  # noqa: E402


def _client_cli(*args: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", "from refracture.cli import main; main()", "clients", *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _revoke(registry: Path, name: str) -> None:
    """What ``refracture clients revoke NAME`` does, in this process: the clock starts when
    the file is written, not after the CLI's own start-up (seconds on a loaded machine)."""
    from serving.auth.clients import read_registry, revoke, write_registry

    write_registry(registry, revoke(read_registry(registry), name))


def token_vs_key(url: str, key: str, token: str, duration: int, repeats: int, work: Path) -> dict:
    from serving.scoring.examples import example_record

    body = json.dumps(example_record())
    scripts = {"api_key": work / "key.lua", "token": work / "token.lua"}
    scripts["api_key"].write_text(LUA % {"key": key, "body": body})
    scripts["token"].write_text(LUA % {"key": token, "body": body})
    for script in scripts.values():  # warm-up
        run_wrk(url, 2, 3, script)
    runs: dict[str, list[dict]] = {name: [] for name in scripts}
    for r in range(repeats):
        for name, script in scripts.items():
            result = run_wrk(url, 32, duration, script)
            runs[name].append(result)
            print(f"run {r + 1} {name:8s} c=32: p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                  f"{result['rps']:7.1f} req/s  non-2xx {result['non_2xx']}", flush=True)
    med = {name: {k: statistics.median(x[k] for x in rs) for k in ("rps", "p50_ms", "p99_ms", "non_2xx")}
           for name, rs in runs.items()}
    ratios = [t["rps"] / k["rps"] for t, k in zip(runs["token"], runs["api_key"])]
    return {"runs": runs, "median": med, "ratio_median_rps": med["token"]["rps"] / med["api_key"]["rps"],
            "ratio_per_pair": ratios}


async def _rotation(url: str, steady: dict[str, str], victim_key: str, revoke, seconds: float) -> dict:
    import httpx

    from serving.scoring.examples import example_record

    body = json.dumps(example_record()).encode()
    stop_at = time.monotonic() + seconds
    other: dict[int | str, int] = {}
    victim: list[tuple[float, int]] = []
    revoked_at: list[float] = []

    async def sender(client: httpx.AsyncClient, key: str, is_victim: bool) -> None:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        while time.monotonic() < stop_at:
            try:
                status = (await client.post(url, content=body, headers=headers)).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__  # a failure of the client or the connection, named
            if is_victim:
                victim.append((time.monotonic(), status))
            else:
                other[status] = other.get(status, 0) + 1

    async def revoker() -> None:
        await asyncio.sleep(seconds / 4)
        await asyncio.to_thread(revoke)
        revoked_at.append(time.monotonic())

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = [sender(client, key, False) for key in steady.values() for _ in range(8)]
        tasks.append(sender(client, victim_key, True))
        await asyncio.gather(*tasks, revoker())
    # The revocation counts from when the CLI finished (the registry written just before): a
    # refusal seen earlier than that (possible: the file is written before the CLI exits) is 0 s.
    first_refusal = next((t for t, s in victim if s == 401), None)
    accepted_after = sum(1 for t, s in victim if s == 200 and first_refusal is not None and t > first_refusal)
    return {"steady_clients": len(steady), "steady_connections": 8 * len(steady),
            "steady_statuses": {str(k): v for k, v in sorted(other.items(), key=lambda kv: str(kv[0]))},
            "steady_failed": sum(v for k, v in other.items() if k != 200),
            "steady_requests": sum(other.values()),
            "victim_requests": len(victim),
            "victim_200_before_revocation": sum(1 for t, s in victim if s == 200 and t < revoked_at[0]),
            "seconds_to_refusal": None if first_refusal is None else round(max(0.0, first_refusal - revoked_at[0]), 3),
            "victim_requests_after_revocation": sum(1 for t, _ in victim if t >= revoked_at[0]),
            "victim_accepted_after_first_refusal": accepted_after}


def auth_cost(idp, registry: Path, key: str, token: str, n: int) -> dict:
    """Microseconds per authentication (the guard's ``authenticate`` call alone, in this
    process): a named client's key against the same system's reused token; median of 5
    blocks of ``n`` calls each, interleaved."""
    import timeit

    from serving.config import OidcSettings, ServingSettings
    from serving.http.identity import ClientAuthenticator

    settings = ServingSettings(api_key=None, audit_salt=b"bench", audit_salt_is_random=False, clients_file=registry,
                               oidc=OidcSettings(issuer=idp.issuer, audience=idp.audience))
    auth = ClientAuthenticator.from_settings(settings)
    scopes = {name: {"type": "http", "headers": [(b"authorization", f"Bearer {cred}".encode())]}
              for name, cred in (("api_key", key), ("token", token))}
    for scope in scopes.values():
        assert auth.authenticate(scope).client  # both accepted (and the token cached)
    blocks: dict[str, list[float]] = {name: [] for name in scopes}
    for _ in range(5):
        for name, scope in scopes.items():
            blocks[name].append(timeit.timeit(lambda: auth.authenticate(scope), number=n) / n * 1e6)
    uncached = []
    for _ in range(5):
        auth.verifier._verified.clear()
        uncached.append(timeit.timeit(lambda: auth.authenticate(scopes["token"]), number=1) * 1e6)
    return {name: round(statistics.median(v), 2) for name, v in blocks.items()} | {
        "token_first_use_us": round(statistics.median(uncached), 1), "blocks_us": blocks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rotation-s", type=float, default=40.0, help="length of the rotation run, seconds")
    ap.add_argument("--part", choices=("all", "speed", "rotation"), default="all")
    args = ap.parse_args()

    from oidc_provider import OidcProvider
    from serving_support import free_port, store_env

    store = ensure_store()
    work = Path(tempfile.mkdtemp(prefix="bench-identity-"))
    registry = work / "clients.json"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with OidcProvider(access_token_ttl_s=3600) as idp:
        env = store_env(store, REFRACTURE_CLIENTS_FILE=str(registry), REFRACTURE_AUDIT_SALT="bench",
                        REFRACTURE_AUDIT_LOG=str(work / "audit.jsonl"), REFRACTURE_OIDC_ISSUER=idp.issuer,
                        REFRACTURE_OIDC_AUDIENCE=idp.audience)
        keys = {name: _client_cli("add", name, "--scopes", "predict,explain", "--file", str(registry), env=env)
                for name in ("bench", "steady-1", "steady-2", "steady-3", "steady-4", "victim")}
        token = idp.system_token()["access_token"]
        cost = auth_cost(idp, registry, keys["bench"], token, 20_000)
        print(f"authentication alone: API key {cost['api_key']} us, token {cost['token']} us "
              f"(first use of a token, signature checked: {cost['token_first_use_us']} us)", flush=True)
        svc = start([sys.executable, "-c", "from refracture.cli import main; main()", "serve", "--port", str(port)],
                    env, work / "service.log", url, timeout_s=400)
        try:
            speed = token_vs_key(f"{url}/predict", keys["bench"], token, args.duration, args.repeats, work) \
                if args.part in ("all", "speed") else None
            rotation = asyncio.run(_rotation(
                f"{url}/predict", {k: v for k, v in keys.items() if k.startswith("steady")}, keys["victim"],
                lambda: _revoke(registry, "victim"), args.rotation_s)) if args.part in ("all", "rotation") else None
        finally:
            stop(svc)
    result = {"auth_cost_us": cost, "token_vs_key": speed, "rotation": rotation}
    OUT.mkdir(parents=True, exist_ok=True)
    OUT.joinpath(f"identity-{args.part}.json").write_text(json.dumps(result, indent=2))
    if speed is not None:
        med = speed["median"]
        print(f"\n/predict at 32 connections: API key {med['api_key']['rps']:.1f} req/s, token {med['token']['rps']:.1f} "
              f"req/s, ratio {speed['ratio_median_rps']:.3f} (per pair: {', '.join(f'{r:.3f}' for r in speed['ratio_per_pair'])})")
    if rotation is None:
        return
    print(f"rotation: refused {rotation['seconds_to_refusal']} s after the revocation; other clients' failed requests: "
          f"{rotation['steady_failed']} of {rotation['steady_requests']} ({rotation['steady_statuses']}); "
          f"victim accepted after its first refusal: {rotation['victim_accepted_after_first_refusal']}")


if __name__ == "__main__":
    main()

"""Serving benchmark (issue 4): HTTP throughput and latency, and batch-file scoring speed.

    .venv/bin/python bench/bench_serving.py [--duration 15] [--repeats 3] [--records 100000]

1. Trains a small champion per outcome into ``bench/out/serving-store`` (once; reused).
2. Starts, on 127.0.0.1, ``refracture serve`` and three bare echo endpoints
   (``bench/bench_serving_bare.py``: same input model, return their input: stock BentoML
   and ``bare_cached``, the fair floor the targets use; ``bench/bench_serving_floor_fixed.py``:
   ``bare_fixed``, the same on the service's server classes, the strict floor) and drives each with ``wrk`` (apt package) at 1, 8 and 32 connections, posting the example
   record: p50, p99 and requests/s per run; ``--repeats`` runs, medians reported. The three
   targets are measured interleaved (bare, predict, explain for each run and concurrency) so
   that load from other users of the machine hits them alike.
3. Times ``refracture predict`` on ``--records`` simulated records (Parquet), with and
   without ``--explain``: records/s of the whole command and of the scoring alone.

Server settings to compare are passed as BentoML config overrides, e.g.
``--bento-options "services.logging.access.enabled=false"`` (service defaults, applied to
every server; BentoML cannot address a service whose name has a hyphen here). Results go to ``bench/out/serving-*.json`` and
a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))
OUT = ROOT / "bench" / "out"
KEY = "bench-key-0123456789abcdef"
CONCURRENCY = (1, 8, 32)

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.body = [[%(body)s]]
"""


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(url: str, connections: int, duration: int, script: Path) -> dict:
    """One wrk run: p50/p99 in ms, requests/s, non-2xx count."""
    threads = min(connections, 2)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency",
                          "--timeout", "30s", "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, flags=re.M))
    if "50" not in lat or "99" not in lat:
        raise RuntimeError(f"cannot read wrk's latency distribution:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*timeout (\d+)", out)
    return {"p50_ms": _ms(lat["50"]), "p99_ms": _ms(lat["99"]), "rps": rps,
            "non_2xx": int(bad.group(1)) if bad else 0, "timeouts": int(errors.group(1)) if errors else 0}


def ensure_store() -> Path:
    from serving_support import ensure_trained_store

    OUT.mkdir(parents=True, exist_ok=True)
    return ensure_trained_store(OUT)


def start(cmd: list[str], env: dict, log: Path, url: str, ready_path: str = "/readyz", timeout_s: float = 120):
    import httpx

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd} exited; see {log}")
        try:
            if httpx.get(url + ready_path, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)  # not left running when the caller gives up
    raise TimeoutError(f"{cmd} not ready after {timeout_s:.0f} s; see {log}")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a server: the process and every process
    under it (BentoML's workers and their scoring processes)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in family:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def stop(proc) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def ensure_challenger(store: Path) -> str:
    """A ``challenger`` for the adjacent-fracture model of the bench store (a new version of
    the champion's own model, so shadow scoring costs what a real challenger costs);
    returns its version."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{store / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "refracture-adjacent_fracture"
    champion = client.get_model_version_by_alias(name, "champion")
    try:
        current = client.get_model_version_by_alias(name, "challenger")
        if str(current.version) != str(champion.version):
            return str(current.version)
    except Exception:  # noqa: BLE001 - no challenger yet
        pass
    new = client.create_model_version(name, champion.source, run_id=champion.run_id, tags=champion.tags)
    client.set_registered_model_alias(name, "challenger", new.version)
    return str(new.version)


def http_bench(store: Path, duration: int, repeats: int, options: str, workers: int, tag: str,
               concurrency: tuple[int, ...] = CONCURRENCY, compare_thread: bool = False,
               compare_log: bool = False) -> dict:
    from serving.scoring.examples import example_record
    from serving_support import free_port, store_env

    body = json.dumps(example_record())
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    script = work / "post.lua"
    script.write_text(LUA % {"key": KEY, "body": body})
    env = store_env(store, REFRACTURE_API_KEY=KEY, REFRACTURE_AUDIT_SALT="bench", REFRACTURE_WORKERS=str(workers),
                    REFRACTURE_AUDIT_LOG=str(work / "audit.jsonl"))  # the prediction log off (store_env)
    svc_env, bare_env = dict(env), dict(env)
    bare_env["REFRACTURE_GC_FREEZE"] = "1"  # the service freezes its start-up heap; so does the floor
    if options:
        svc_env["BENTOML_CONFIG_OPTIONS"] = options
        bare_env["BENTOML_CONFIG_OPTIONS"] = options
    cached_env = dict(bare_env)
    if options:
        cached_env["BENTOML_CONFIG_OPTIONS"] = options
    p_svc, p_bare, p_cached = free_port(), free_port(), free_port()
    svc = start([sys.executable, "-c", "from refracture.cli import main; main()", "serve", "--port", str(p_svc),
                 "--workers", str(workers)], svc_env, work / "service.log", f"http://127.0.0.1:{p_svc}")
    bare = start([sys.executable, "-m", "bentoml", "serve", "bench.bench_serving_bare:Bare", "--host", "127.0.0.1",
                  "--port", str(p_bare), "--working-dir", str(ROOT)], bare_env, work / "bare.log",
                 f"http://127.0.0.1:{p_bare}")
    cached = start([sys.executable, "-m", "bentoml", "serve", "bench.bench_serving_bare:BareCached", "--host", "127.0.0.1",
                    "--port", str(p_cached), "--working-dir", str(ROOT)], cached_env, work / "bare-cached.log",
                   f"http://127.0.0.1:{p_cached}")
    p_fixed = free_port()
    fixed = start([sys.executable, "-m", "bentoml", "serve", "bench.bench_serving_floor_fixed:BareFixed", "--host",
                   "127.0.0.1", "--port", str(p_fixed), "--working-dir", str(ROOT)], cached_env, work / "bare-fixed.log",
                  f"http://127.0.0.1:{p_fixed}")
    targets = {"bare": f"http://127.0.0.1:{p_bare}/echo", "bare_cached": f"http://127.0.0.1:{p_cached}/echo",
               "bare_fixed": f"http://127.0.0.1:{p_fixed}/echo",
               "predict": f"http://127.0.0.1:{p_svc}/predict", "explain": f"http://127.0.0.1:{p_svc}/explain"}
    servers = {"bare": bare, "bare_cached": cached, "bare_fixed": fixed, "predict": svc, "explain": svc}
    if compare_thread:  # the same service scoring in the worker's thread (REFRACTURE_SCORING_PROCESS=0)
        p_thread = free_port()
        servers["predict_thread"] = servers["explain_thread"] = start(
            [sys.executable, "-c", "from refracture.cli import main; main()", "serve", "--port", str(p_thread),
             "--workers", str(workers)], {**svc_env, "REFRACTURE_SCORING_PROCESS": "0"}, work / "service-thread.log",
            f"http://127.0.0.1:{p_thread}")
        targets["predict_thread"] = f"http://127.0.0.1:{p_thread}/predict"
        targets["explain_thread"] = f"http://127.0.0.1:{p_thread}/explain"
    if compare_log:  # the same service with the prediction log on (SQLite), and with challengers in shadow too
        ensure_challenger(store)
        log_env = {**svc_env, "REFRACTURE_PREDICTION_LOG": "1", "REFRACTURE_PREDICTION_SECRET": KEY * 2}
        for name, extra in (("predict_log", {}), ("predict_shadow", {"REFRACTURE_SHADOW_CHALLENGERS": "1"})):
            port = free_port()
            servers[name] = start([sys.executable, "-c", "from refracture.cli import main; main()", "serve", "--port",
                                   str(port), "--workers", str(workers)],
                                  {**log_env, **extra, "REFRACTURE_PREDICTION_DB": f"sqlite:///{work / name}.db"},
                                  work / f"service-{name}.log", f"http://127.0.0.1:{port}")
            targets[name] = f"http://127.0.0.1:{port}/predict"
    runs: dict = {t: {c: [] for c in concurrency} for t in targets}
    try:
        for name, url in targets.items():  # warm-up
            run_wrk(url, 2, 3, script)
        for r in range(repeats):
            for c in concurrency:
                for name, url in targets.items():
                    cpu_before = tree_cpu_s(servers[name].pid)
                    result = run_wrk(url, c, duration, script)
                    result["server_cores"] = round((tree_cpu_s(servers[name].pid) - cpu_before) / duration, 2)
                    runs[name][c].append(result)
                    print(f"[{tag}] run {r + 1} {name:8s} c={c:2d}: p50 {result['p50_ms']:8.1f} ms  p99 {result['p99_ms']:8.1f} ms  "
                          f"{result['rps']:8.1f} req/s  non-2xx {result['non_2xx']}  server cores {result['server_cores']:.2f}",
                          flush=True)
    finally:
        for server in {id(p): p for p in [svc, bare, cached, fixed, *servers.values()]}.values():
            stop(server)
        audit_lines = sum(1 for _ in open(work / "audit.jsonl")) if (work / "audit.jsonl").exists() else 0
        shutil.rmtree(work, ignore_errors=True)
    med = {t: {c: {k: statistics.median(x[k] for x in runs[t][c])
                   for k in ("p50_ms", "p99_ms", "rps", "non_2xx", "server_cores")}
               for c in concurrency} for t in targets}
    return {"tag": tag, "options": options, "workers": workers, "runs": runs, "median": med, "audit_lines": audit_lines}


def batch_bench(store: Path, n: int, n_explain: int | None = None) -> dict:
    """`refracture predict` on n simulated records, and with --explain on ``n_explain``
    (default n; 0 = skip)."""
    from features.records import tables_to_records
    from features.simulator import load_profile, simulate
    from features.validate import validate_raw
    from serving_support import store_env

    def records_file(size: int) -> Path:
        data = OUT / f"records-{size}.parquet"
        if not data.exists():
            tables, _ = simulate(load_profile("xiong2021-pvp"), size, 11)
            flat = tables_to_records(validate_raw(tables))
            for col in ("surgery_date", "pain_onset_date"):
                flat[col] = flat[col].dt.strftime("%Y-%m-%d")
            flat.to_parquet(data, index=False)
        return data

    env = store_env(store)
    out = {}
    n_explain = n if n_explain is None else n_explain
    for explain in (False, True) if n_explain else (False,):
        n = n_explain if explain else n
        data = records_file(n)
        target = OUT / f"scored-{n}{'-explain' if explain else ''}.parquet"
        cmd = [sys.executable, "-c", "from refracture.cli import main; main()", "predict", "--input", str(data),
               "--output", str(target)] + (["--explain"] if explain else [])
        t = time.perf_counter()
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        inner = re.search(r"([\d,]+) records/s", result.stderr)
        out["explain" if explain else "predict"] = {
            "records": n, "wall_s": round(wall, 2), "records_per_s_command": round(n / wall),
            "records_per_s_scoring": int(inner.group(1).replace(",", "")) if inner else None}
        print(f"refracture predict{' --explain' if explain else ''}: {n} records, {wall:.1f} s wall "
              f"({n / wall:,.0f} records/s; read+check+score+write: {inner.group(1) if inner else '?'} records/s)", flush=True)
    return out


def table(http: dict, floor_name: str = "bare_cached") -> str:
    """Medians; ratios against a floor (``bare_cached``: the fair floor of the targets;
    ``bare_fixed``: the same on the service's server classes, the strict floor)."""
    m = http["median"]
    lines = ["| clients | target | p50 ms | p99 ms | req/s | req/s ÷ floor | p99 ÷ floor p99 | server cores |",
             "|---|---|---|---|---|---|---|---|"]
    for c in sorted(int(k) for k in m[floor_name]):
        floor = m[floor_name][c]
        for name in [t for t in ("bare", "bare_cached", "bare_fixed", "predict", "explain", "predict_thread",
                                 "explain_thread") if t in m]:
            x = m[name][c]
            lines.append(f"| {c} | {name} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {x['rps']:.1f} | "
                         f"{x['rps'] / floor['rps']:.0%} | {x['p99_ms'] / floor['p99_ms']:.2f}× | {x['server_cores']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--records", type=int, default=100_000, help="records for refracture predict (0 = skip)")
    ap.add_argument("--bento-options", default="", help="BENTOML_CONFIG_OPTIONS for every server, e.g. services.logging.access.enabled=false")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--tag", default="default")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="wrk connections, comma-separated")
    ap.add_argument("--explain-records", type=int, default=None, help="records for refracture predict --explain "
                    "(default --records; 0 = skip)")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--compare-log", action="store_true", help="also serve with the prediction log on (predict_log) "
                    "and with a challenger scored in shadow (predict_shadow), measured in the same runs as predict "
                    "(log off)")
    ap.add_argument("--compare-thread", action="store_true", help="also serve with REFRACTURE_SCORING_PROCESS=0 "
                    "(scoring in the worker's thread) and measure it in the same runs")
    args = ap.parse_args()
    if shutil.which("wrk") is None and not args.skip_http:
        sys.exit("wrk not found: apt-get install wrk")
    store = ensure_store()
    result: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}, "args": vars(args)}
    if not args.skip_http:
        result["http"] = http_bench(store, args.duration, args.repeats, args.bento_options, args.workers, args.tag,
                                    tuple(int(c) for c in args.concurrency.split(",")), args.compare_thread,
                                    args.compare_log)
        print()
        print(table(result["http"]))
        print("\nAgainst the strict floor (bare_fixed):\n")
        print(table(result["http"], "bare_fixed"))
    if args.records:
        result["batch"] = batch_bench(store, args.records, args.explain_records)
    result["machine"]["load_avg_end"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"serving-{args.tag}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

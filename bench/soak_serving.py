"""Soak and fault runs of the real service (`refracture serve`), measured with wrk.

    .venv/bin/python bench/soak_serving.py soak [--minutes 10] [--connections 32]
    .venv/bin/python bench/soak_serving.py kill-worker [--minutes 2] [--connections 32]

``soak``: one worker, 32 connections mixing POST /predict (70 %), /explain (20 %) and bad
bodies (10 %: malformed JSON, a key given twice, invalid Unicode, a value out of range), in
consecutive one-minute wrk runs. Per minute: p50/p90/p99, requests/s, answers by status,
and the workers' RSS. Pass criteria (issue 9): no status other than 200 (good bodies),
400 and 422 (bad ones) and no socket error; RSS growth after the first minute under
10 %; the last minute's p99 within 1.5x the second's.

``kill-worker``: two workers, /predict only; 20 s into the second minute one worker is
killed (SIGKILL). Reports the failed requests (non-2xx, socket errors) over the total,
and whether the server started a replacement (a new worker pid, back to two).

wrk does not say which request an answer belongs to, so statuses are counted by value:
good and bad bodies are told apart by their status (200 vs 400/422), and the counts of
each are checked against the mix. Results: printed, and written to
``bench/out/soak_<mode>.json``. Needs ``wrk`` (Debian: ``apt-get install wrk``) and a trained
store (``bench/out/serving-store``, made on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT))
KEY = "bench-key-0123456789abcdef"
EXPECTED = {200, 400, 422}

# One wrk Lua state per thread: requests cycle through a fixed mix of 10; answers are
# counted by status; done() sums the threads' counts and prints them as one JSON line.
LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  statuses = {}
  local h = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(key)s"}
  local good, bad = [[%(good)s]], {%(bad)s}
  mix = {}
  for i = 1, 7 do table.insert(mix, wrk.format("POST", "/predict", h, good)) end
  for i = 1, 2 do table.insert(mix, wrk.format("POST", "/explain", h, good)) end
  bad_requests = {}
  for _, b in ipairs(bad) do table.insert(bad_requests, wrk.format("POST", "/predict", h, b)) end
  if %(predict_only)s then mix = {wrk.format("POST", "/predict", h, good)} else table.insert(mix, "BAD") end
  n, nbad = 0, 0
end
function request()
  n = n + 1
  local r = mix[(n - 1) %% #mix + 1]
  if r == "BAD" then nbad = nbad + 1; return bad_requests[(nbad - 1) %% #bad_requests + 1] end
  return r
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do total[tostring(k)] = (total[tostring(k)] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, string.format('"%%s": %%d', k, v)) end
  io.write("STATUSES {" .. table.concat(parts, ", ") .. "}\n")
end
"""


def _bad_bodies(good: str) -> list[str]:
    """Bodies the service must refuse with 400 or 422 (never 5xx)."""
    record = json.loads(good)
    out_of_range = json.loads(good)
    out_of_range["patient"]["height_cm"] = 1.6
    return [
        good[: len(good) // 2],                                                   # malformed JSON: 400
        good.replace('"age_years": 78.0', '"age_years": 78.0, "age_years": 40.0'),  # duplicate key: 400
        good.replace('"example-0001"', '"\\ud800"'),                              # lone surrogate: 400
        json.dumps(out_of_range),                                                 # out of range: 422
        json.dumps({**record, "unknown_field": 1}),                               # unknown field: 422
    ]


def _lua_string(text: str) -> str:
    assert "]]" not in text
    return "[[" + text + "]]"


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk_minute(url: str, connections: int, seconds: int, script: Path) -> dict:
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", "--timeout", "30s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", out, flags=re.M))
    statuses = json.loads(re.search(r"^STATUSES (.*)$", out, flags=re.M).group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"p50_ms": _ms(lat["50"]), "p90_ms": _ms(lat["90"]), "p99_ms": _ms(lat["99"]),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "statuses": {k: statuses[k] for k in sorted(statuses)},
            "socket_errors": sum(int(x) for x in socket_errors.groups()) if socket_errors else 0}


def _workers(server_pid: int) -> list:
    import psutil

    return [p for p in psutil.Process(server_pid).children(recursive=True)
            if any("worker" in part for part in p.cmdline())]


def _rss_mb(server_pid: int) -> float:
    return round(sum(p.memory_info().rss for p in _workers(server_pid)) / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["soak", "kill-worker"])
    ap.add_argument("--minutes", type=int, default=None, help="default: 10 (soak), 2 (kill-worker)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--window", type=int, default=60, help="seconds per measured window")
    args = ap.parse_args()
    minutes = args.minutes or (10 if args.mode == "soak" else 2)

    from bench_serving import OUT, ensure_store, start, stop
    from serving.scoring.examples import example_record
    from serving_support import free_port, store_env

    store = ensure_store()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    good = json.dumps(example_record())
    script = work / "mix.lua"
    script.write_text(LUA % {"key": KEY, "good": good, "bad": ", ".join(_lua_string(b) for b in _bad_bodies(good)),
                             "predict_only": "true" if args.mode == "kill-worker" else "false"})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workers = 2 if args.mode == "kill-worker" else 1
    env = store_env(store, REFRACTURE_API_KEY=KEY, REFRACTURE_AUDIT_SALT="soak", REFRACTURE_WORKERS=str(workers),
                    REFRACTURE_AUDIT_LOG=str(work / "audit.jsonl"))
    cmd = [sys.executable, "-c", "from refracture.cli import main; main()", "serve", "--port", str(port),
           "--workers", str(workers)]
    proc = start(cmd, env, work / "server.log", url)
    rows: list[dict] = []
    killed: dict = {}
    try:
        before_pids = sorted(p.pid for p in _workers(proc.pid))
        for minute in range(1, minutes + 1):
            timer = None
            if args.mode == "kill-worker" and minute == 2:
                def kill() -> None:
                    # The worker holding the most client connections: the kernel may have
                    # handed all of wrk's connections to one worker, and killing the other
                    # would test nothing.
                    def held(p) -> int:
                        return sum(1 for c in p.net_connections("tcp") if c.status == "ESTABLISHED" and c.laddr.port == port)

                    victim = max(_workers(proc.pid), key=held)
                    killed.update(pid=victim.pid, connections=held(victim), at=time.strftime("%H:%M:%S"))
                    os.kill(victim.pid, signal.SIGKILL)

                timer = threading.Timer(20, kill)
                timer.start()
            row = {"minute": minute, **wrk_minute(url, args.connections, args.window, script),
                   "rss_mb": _rss_mb(proc.pid), "load_1min": round(os.getloadavg()[0], 2)}
            if timer:
                timer.join()
            rows.append(row)
            print(json.dumps(row), flush=True)
        after_pids = sorted(p.pid for p in _workers(proc.pid))
    finally:
        stop(proc)

    summary: dict = {"mode": args.mode, "connections": args.connections, "workers": workers, "minutes": rows}
    total = sum(r["requests"] for r in rows)
    unexpected = sum(v for r in rows for k, v in r["statuses"].items() if int(k) not in EXPECTED)
    socket_errors = sum(r["socket_errors"] for r in rows)
    if args.mode == "soak":
        bad = sum(v for r in rows for k, v in r["statuses"].items() if k in ("400", "422"))
        rss_growth = rows[-1]["rss_mb"] / rows[0]["rss_mb"] - 1 if len(rows) > 1 else 0.0
        p99_ratio = rows[-1]["p99_ms"] / rows[1]["p99_ms"] if len(rows) > 1 else 1.0
        summary.update(requests=total, unexpected_statuses=unexpected, socket_errors=socket_errors,
                       refused_share=round(bad / total, 4) if total else None,
                       rss_growth_after_warmup=round(rss_growth, 4), p99_last_over_second=round(p99_ratio, 2),
                       passed=unexpected == 0 and socket_errors == 0 and rss_growth < 0.10 and p99_ratio <= 1.5)
    else:
        failed = sum(v for r in rows for k, v in r["statuses"].items() if k != "200") + socket_errors
        summary.update(requests=total, failed=failed, failed_share=round(failed / total, 5) if total else None,
                       killed=killed, workers_before=before_pids, workers_after=after_pids,
                       replaced=len(after_pids) == len(before_pids) and killed.get("pid") not in after_pids,
                       passed=total > 0 and failed / total < 0.01 and len(after_pids) == len(before_pids)
                       and killed.get("pid") not in after_pids)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"soak_{args.mode}.json"
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "minutes"}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

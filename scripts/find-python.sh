#!/usr/bin/env bash
# Print the path of a working Python >= 3.12, preferring 3.12 (the version requirements.lock
# was resolved on). PATH first, then pyenv's versions folder. A pyenv shim on PATH may exist
# yet refuse to run, so every candidate is actually executed.
set -u
minor() { "$1" -c 'import sys, venv, ensurepip; print(sys.version_info[1] if sys.version_info[0] == 3 else 0)' 2>/dev/null; }
root=${PYENV_ROOT:-$HOME/.pyenv}
cands=()
for name in python3.12 python3 python python3.13 python3.14; do
  p=$(command -v "$name" 2>/dev/null) && cands+=("$p")
done
for d in $(ls -d "$root"/versions/3.* 2>/dev/null | sort -V); do
  for exe in "$d"/bin/python3.1[2-9]; do [ -x "$exe" ] && cands+=("$exe"); done
done
fallback=""
for p in "${cands[@]}"; do
  m=$(minor "$p") || continue
  [ -n "$m" ] || continue
  if [ "$m" -eq 12 ]; then echo "$p"; exit 0; fi
  if [ "$m" -gt 12 ] && [ -z "$fallback" ]; then fallback=$p; fi
done
if [ -n "$fallback" ]; then echo "$fallback"; exit 0; fi
echo "No Python >= 3.12 found on PATH or under $root/versions. Install one (e.g. pyenv install 3.12)." >&2
exit 1

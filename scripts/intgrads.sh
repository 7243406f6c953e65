#!/usr/bin/env bash
# Start (or stop) the intgrads server (TorchServe, or Ray Serve with --frontend ray). The first run creates .venv/ and installs what it needs;
# then it runs the Python launcher with the same arguments:
#
#   ./scripts/intgrads.sh --demo
#   ./scripts/intgrads.sh -bp /path/to/bert.pth --tokenizer /path/to/bert-base-uncased --cpu
#   ./scripts/intgrads.sh --stop
#   ./scripts/intgrads.sh --help
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Ray Serve is installed the first time a run asks for it
previous=""
for arg in "$@"; do
    if [[ "$arg" == "--frontend=ray" || ( "$previous" == "--frontend" && "$arg" == "ray" ) ]]; then
        export INTGRADS_EXTRAS="${INTGRADS_EXTRAS:+$INTGRADS_EXTRAS,}ray"
    fi
    previous="$arg"
done
"$root/scripts/bootstrap.sh"
venv="${INTGRADS_VENV:-$root/.venv}"
export INTGRADS_PROG="${INTGRADS_PROG:-$0}"   # how the launcher names itself in the hints it prints
exec "$venv/bin/python" -m intgrads.launcher "$@"

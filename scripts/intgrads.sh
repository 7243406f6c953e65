#!/usr/bin/env bash
# Start (or stop) the intgrads server (TorchServe, or Ray Serve with --frontend ray). The first run creates .venv/ and installs what it needs;
# then it runs the Python launcher with the same arguments:
#
#   ./scripts/intgrads.sh --demo
#   ./scripts/intgrads.sh -bp /path/to/bert.pth --tokenizer /path/to/bert-base-uncased --cpu
#   ./scripts/intgrads.sh --stop
#   ./scripts/intgrads.sh --help
#   ./scripts/intgrads.sh --batch --demo sentences.txt -o answers/    # intgrads-batch: no server, Ray Data
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Ray (Serve, Data) is installed the first time a run asks for it
previous=""
for arg in "$@"; do
    if [[ "$arg" == "--frontend=ray" || ( "$previous" == "--frontend" && "$arg" == "ray" ) || "$arg" == "--batch" ]]; then
        export INTGRADS_EXTRAS="${INTGRADS_EXTRAS:+$INTGRADS_EXTRAS,}ray"
    fi
    previous="$arg"
done
"$root/scripts/bootstrap.sh"
venv="${INTGRADS_VENV:-$root/.venv}"
if [[ "${1:-}" == "--batch" ]]; then   # the batch job (intgrads-batch) instead of a server
    shift
    exec "$venv/bin/python" -m intgrads.batch "$@"
fi
export INTGRADS_PROG="${INTGRADS_PROG:-$0}"   # how the launcher names itself in the hints it prints
exec "$venv/bin/python" -m intgrads.launcher "$@"

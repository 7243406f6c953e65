#!/usr/bin/env bash
# Create .venv/ and install intgrads into it (editable, with the serve and test extras) when it is missing
# or when the package metadata changed since the last install, or when an extra is wanted that is not there yet.
# Quiet when there is nothing to do.
#
#   INTGRADS_VENV        the environment to use (default: .venv/ at the top of the checkout)
#   INTGRADS_EXTRAS      extras to install besides serve and test, comma-separated (e.g. ray)
#   INTGRADS_TORCH_SPEC  what pip installs for torch when the environment has none (default: torch);
#                        e.g. torch==2.13.0, or "torch --index-url https://download.pytorch.org/whl/cpu"
#   PYTHON               the interpreter that creates the environment (default: python3)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${INTGRADS_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.intgrads-install-stamp"

say() { printf 'bootstrap: %s\n' "$*" >&2; }

want="$(cd "$root" && cat setup.cfg setup.py pyproject.toml 2>/dev/null | sha256sum | cut -d' ' -f1)"
extras="serve,test${INTGRADS_EXTRAS:+,$INTGRADS_EXTRAS}"
if [[ -x "$venv/bin/python" && -f "$stamp" ]]; then
    read -r had had_extras < "$stamp" || true
    missing=""
    for extra in ${extras//,/ }; do
        [[ ",${had_extras:-serve,test}," == *",$extra,"* ]] || missing="$missing $extra"
    done
    if [[ "$had" == "$want" && -z "$missing" ]]; then
        exit 0
    fi
    # keep what was installed before: an extra once asked for stays
    for extra in ${had_extras//,/ }; do
        [[ ",$extras," == *",$extra,"* ]] || extras="$extras,$extra"
    done
fi

if [[ ! -x "$venv/bin/python" ]]; then
    if ! command -v "$python" >/dev/null 2>&1; then
        say "no $python found: install Python 3.9 or newer (or set PYTHON=/path/to/python3)"
        exit 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
        say "$("$python" --version 2>&1) is too old: intgrads needs Python 3.9 or newer (set PYTHON=...)"
        exit 1
    fi
    say "creating $venv"
    if ! "$python" -m venv "$venv"; then
        say "could not create a virtual environment: on Debian/Ubuntu install python3-venv (apt-get install python3-venv)"
        exit 1
    fi
fi

if ! "$venv/bin/python" -c 'import torch' >/dev/null 2>&1; then
    spec="${INTGRADS_TORCH_SPEC:-torch}"
    say "installing $spec (first time only; this can take a few minutes)"
    # shellcheck disable=SC2086  # the spec may carry pip options, e.g. --index-url
    "$venv/bin/python" -m pip install $spec >&2
fi

say "installing intgrads and its dependencies ($extras) into $venv"
"$venv/bin/python" -m pip install --quiet -e "$root[$extras]" >&2
echo "$want $extras" > "$stamp"
say "done"

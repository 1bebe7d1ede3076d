#!/bin/sh
# Creates the venv the SDK client tests use: ${EGRET_VENV:-<repo>/.venv}.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${EGRET_VENV:-$(cd "$here/../.." && pwd)/.venv}
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
echo "SDK venv ready: $venv"

#!/usr/bin/env bash
# Set up a working environment: a virtual environment with distillops installed (pinned by
# constraints.txt) and Fashion-MNIST available offline when the machine can install it.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtual environment $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import pipeline, plugins, torch, mlflow, dvc, onnxruntime, pytest" 2>/dev/null \
   || [ pyproject.toml -nt "$VENV/.installed" ] || [ constraints.txt -nt "$VENV/.installed" ]; then
    echo "==> installing distillops and its pinned dependencies (a few minutes the first time)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test]"
    touch "$VENV/.installed"
fi

# Fashion-MNIST: data/raw/fashion-mnist, or Debian's package, or torchvision's download at prepare time.
if [ ! -e data/raw/fashion-mnist/train-images-idx3-ubyte.gz ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "==> installing Debian's dataset-fashion-mnist"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
            || echo "    could not install dataset-fashion-mnist; prepare will try torchvision's download"
    elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && [ -z "${CI:-}" ]; then
        echo "==> installing Debian's dataset-fashion-mnist (sudo)"
        (sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
            || echo "    could not install dataset-fashion-mnist; prepare will try torchvision's download"
    else
        echo "==> Fashion-MNIST not found locally; prepare will try torchvision's download"
    fi
fi
# the page `dvc plots show` renders into, with its charting libraries inline (.dvc/config names it)
[ -s .dvc/plots.html ] || "$VENV/bin/python" -m pipeline.plots_page .dvc/plots.html >/dev/null
echo "==> environment ready: source $VENV/bin/activate"

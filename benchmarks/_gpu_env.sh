# Sourced by gpu_sweep.sh and gpu_check.sh (from the repository root): sets PY and PYTHONPATH
# so that dst and its config tools import on a GPU machine. Without hydra-core/omegaconf, their
# wheels in .whl/ (see the device tool's README: pip download ... -d .whl) go to /tmp/site.
PY=${PYTHON:-python3}
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "$(basename "$0"): hydra-core and omegaconf are missing: pip install them or put" \
         "their wheels (and antlr4-python3-runtime's) in .whl/" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

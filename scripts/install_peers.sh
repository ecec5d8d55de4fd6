#!/usr/bin/env bash
# Install the peers that scripts/compare_peers.py compares against, WITHOUT letting pip touch
# the installed torch: every package goes in with --no-deps, at a pinned version.
#
#   bash scripts/install_peers.sh            # install (or re-install) the pinned set
#   bash scripts/install_peers.sh --check    # only check that each peer imports
#
# The dependency lists below were read from each wheel's METADATA (Requires-Dist) and pruned to
# what the peers' import paths actually need:
#   pyhessian 0.1              -> numpy, torch                    (both already installed)
#   hessian-eigenthings 1.0.0a5-> numpy, scipy, torch, tqdm       (already installed)
#   curvlinops-for-pytorch 3.0.1 -> backpack-for-pytorch, einops, einconv, linear_operator,
#        opt-einsum, numpy, scipy, torch, tqdm. `import curvlinops` needs einops, einconv and
#        linear_operator (curvlinops/inverse.py imports linear_operator.utils.linear_cg);
#        backpack-for-pytorch is only imported by curvlinops.experimental and opt-einsum by
#        nothing, so neither is installed.
#   einconv 0.1.0 -> torch, einops;  linear-operator 0.6.1 -> torch>=2.0, scipy;  einops: none.
# The pure-Python dependencies are also the `compare` extra of pyproject.toml.
set -euo pipefail

PYTHON=${PYTHON:-python}

PEERS=(
    "pyhessian==0.1"
    "curvlinops-for-pytorch==3.0.1"
    "hessian-eigenthings==1.0.0a5"
)
DEPS=(
    "einops==0.8.2"
    "einconv==0.1.0"
    "linear-operator==0.6.1"
)

if [[ "${1:-}" != "--check" ]]; then
    torch_before=$("$PYTHON" -c "import torch; print(torch.__version__)")
    "$PYTHON" -m pip install --no-deps "${DEPS[@]}" "${PEERS[@]}"
    torch_after=$("$PYTHON" -c "import torch; print(torch.__version__)")
    if [[ "$torch_before" != "$torch_after" ]]; then
        echo "torch changed from $torch_before to $torch_after: this must not happen" >&2
        exit 1
    fi
fi

"$PYTHON" - <<'PY'
import importlib
import importlib.metadata as md

import torch

failed = []
for module, dist in (("pyhessian", "pyhessian"), ("curvlinops", "curvlinops-for-pytorch"),
                     ("hessian_eigenthings", "hessian-eigenthings")):
    try:
        importlib.import_module(module)
        print(f"ok   {module:<20} {md.version(dist)}")
    except Exception as exc:  # report every peer, then fail
        failed.append(module)
        print(f"FAIL {module:<20} {type(exc).__name__}: {exc}")
print(f"torch {torch.__version__}")
raise SystemExit(1 if failed else 0)
PY

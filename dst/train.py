"""``dst-train`` / ``python -m dst.train``: the Hydra entry point (wiring only).

Examples::

    dst-train model=wrn28_2 data=npz data.path=../shared/data/cifar10_subset.npz \
        sparsity=dsr sparsity.density=0.1 trainer.epochs=30
    dst-train experiment=wrn28_2_cifar10_dsr sparsity.density=0.2
    dst-train -m sparsity=dsr,set,static seed=0,1,2      # a sweep
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from .app import ConfigError, run
from .checkpoint import CheckpointError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
USER_ERRORS = (ConfigError, CheckpointError, ValueError, FileNotFoundError, TypeError,
               OmegaConfBaseException)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _main(cfg: DictConfig) -> None:
    try:
        hc = HydraConfig.get()
        run(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task))
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"dst-train: error: {msg}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    if not CONF_DIR.is_dir():
        sys.exit(f"dst-train: error: config directory {CONF_DIR} not found; install dst from "
                 "its repository with `pip install -e .` (or `make install`)")
    _main()


if __name__ == "__main__":
    main()

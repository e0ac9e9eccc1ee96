import os
from pathlib import Path

import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SUBSET = REPO.parent / "shared" / "data" / "cifar10_subset.npz"

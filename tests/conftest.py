from pathlib import Path

import torch

torch.set_num_threads(1)  # tiny tensors: one thread is fastest and immune to load

REPO = Path(__file__).resolve().parents[1]
SUBSET = REPO.parent / "shared" / "data" / "cifar10_subset.npz"

"""Shared test helpers (tiny models, deterministic batches)."""

import torch
from torch import nn

import dst
from dst.methods import METHODS


class TinyNet(nn.Module):
    """Convs (plain, grouped, depthwise, dilated) and Linear layers: every kind of sparse layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False)
        self.pointwise = nn.Conv2d(8, 16, 1, stride=2)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.grouped(x))
        x = torch.relu(self.depthwise(x))
        x = torch.relu(self.pointwise(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class BlockNet(nn.Module):
    """Two 3 x 3 convs whose weights divide into kernels and (2, 2) tiles (a dense stem and
    head around them): the model of the block-granularity variants."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv1(x))
        return self.fc(torch.relu(self.conv2(x)).flatten(1))


BLOCK_LAYERS = ("conv1", "conv2")  # BlockNet's sparse layers


class AttnNet(nn.Module):
    """A conv stem, one nn.MultiheadAttention over the 16 positions of an 8 x 8 input (4 x 4
    after the stride-2 stem) and a Linear head: every method's invariants over an attention
    layer (its packed in-projection and out-projection are sparse layers)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        t = torch.relu(self.stem(x)).flatten(2).transpose(1, 2)  # (n, 16 tokens, 16)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head(t.mean(1))


def make_method(name: str):
    """A registered method with its defaults; one that removes channels does so within a test's
    first 50 steps (its ramp ends at 0.5 % of the tests' 10,000-step stop)."""
    cls = METHODS[name]
    return cls(ramp=(0.0, 0.005)) if cls.removes_channels else cls()


def dense_only(name: str) -> bool:
    """Methods refused in the compact format: they prune for good or cut layers down."""
    return METHODS[name].shrinks or METHODS[name].removes_channels


def batch(step: int, n: int = 8):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def train_steps(model, opt, engine, start: int, steps: int, on_step=None):
    """Deterministic training: the batch of step t depends only on t."""
    reports = []
    for t in range(start, start + steps):
        x, y = batch(t)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        r = engine.step() if engine is not None else None
        if on_step is not None:
            on_step(r)
        reports.append(r)
    return reports


class Rows(nn.Module):
    """Independent bias-free ``Linear(n_l, 1)`` layers, each reading its own slice of one input
    row; the output is the sum of theirs, so d(output)/d(weight_l) is exactly x's slice l: a test
    chooses every layer's weights *and* its gradient by hand. Zero weights are left inactive by
    :func:`rows_model`."""

    def __init__(self, *weights):
        super().__init__()
        self.sizes = [len(w) for w in weights]
        self.layers = nn.ModuleList(nn.Linear(n, 1, bias=False) for n in self.sizes)
        with torch.no_grad():
            for lin, w in zip(self.layers, weights, strict=True):
                lin.weight.copy_(torch.tensor([w]))

    def forward(self, x):
        parts = x.reshape(1, -1).split(self.sizes, dim=1)
        return sum(lin(p).sum() for lin, p in zip(self.layers, parts, strict=True))


def rows_model(*weights):
    """A sparse :class:`Rows` (dense format) whose active weights are the non-zero ones given;
    its sparse layers are named ``layers.0``, ``layers.1``, ..."""
    model = Rows(*weights)
    dst.sparsify_(model, 1.0)
    dst.set_masks_(model, {f"layers.{i}": torch.tensor([w]) != 0 for i, w in enumerate(weights)})
    return model


def active_positions(model) -> dict[str, list[int]]:
    """Sorted flat indices of each sparse layer's active weights."""
    return {n: sorted(m.active_indices().tolist()) for n, m in dst.sparse_layers(model)}

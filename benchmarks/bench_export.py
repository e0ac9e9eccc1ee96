"""File size of a sparse model exported with dst.export.save (safetensors: values plus bit masks
or int32 indices) against the dense model's safetensors file, ResNet-50 and WRN-28-2 at density
0.1 and 0.2, with the paper's filter (stem, shortcuts and, for WRN, the classifier dense) and
with every conv/linear layer sparse.

    python benchmarks/bench_export.py        # writes benchmarks/export.csv and RESULTS.md
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _results import HERE, command, machine, table, write_csv, write_section  # noqa: E402

import dst  # noqa: E402
from dst import export  # noqa: E402
from dst.models import build_model  # noqa: E402


def models():
    yield "ResNet-50", lambda: torchvision.models.resnet50(), False
    yield "WRN-28-2", lambda: build_model("wrn", 10, depth=28, widen_factor=2), True


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make, dense_fc in models():
            torch.manual_seed(0)
            dense_path = export.save(make(), Path(tmp) / "dense.safetensors")
            dense_bytes = dense_path.stat().st_size
            for density in (0.1, 0.2):
                for filt in ("paper", "all"):
                    model = make()
                    fn = (dst.convert.paper_filter(model, dense_fc=dense_fc) if filt == "paper"
                          else (lambda n, m: True))
                    dst.sparsify_(model, density, filter_fn=fn)
                    path = export.save(model, Path(tmp) / "sparse.safetensors")
                    size = path.stat().st_size
                    assert all(torch.equal(a, b) for a, b in zip(
                        export.load(path).values(), export.to_torch(model).state_dict().values(),
                        strict=True))
                    rows.append({"model": name, "density": density, "filter": filt,
                                 "dense_MB": round(dense_bytes / 1e6, 2),
                                 "sparse_MB": round(size / 1e6, 2),
                                 "ratio": round(size / dense_bytes, 4)})
                    print(rows[-1], flush=True)
    write_csv(HERE / "export.csv", rows)
    write_section("export", "## Export file size (generated)\n\n"
                  f"Command: `{command()}`. Machine: {machine()} (sizes do not depend on it).\n\n"
                  "`dst.export.save` against the dense model's safetensors file; ratio = "
                  "sparse / dense bytes, positions included. `paper`: the stem, shortcut convs "
                  "and (WRN-28-2) the classifier stay dense, as the DSR paper trains them; "
                  "`all`: every conv and linear layer sparse.\n\n"
                  + table(rows, ["model", "density", "filter", "dense_MB", "sparse_MB",
                                 "ratio"]))


if __name__ == "__main__":
    main()

"""``dst-export RUN_DIR --to torch|safetensors --out PATH``: a trained run as a plain torch
``state_dict`` (the keys of the model before ``sparsify_``, loadable with ``weights_only=True``)
or as a safetensors file of values plus positions (:mod:`dst.export`).

The model is rebuilt from the run's own config (saved in its checkpoint) and loaded from
``checkpoints/last.pt`` (``--checkpoint best`` for ``best.pt``); a slimmed structured-DSR run
keeps its slimmed shapes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from . import export
from .app import _build_model, _sparsify
from .checkpoint import CheckpointError, atomic_write, load_checkpoint
from .slim import KEPT, attach_, find_channel_groups

TARGETS = ("torch", "safetensors", "onnx", "inference")
LATER: tuple[str, ...] = ()  # planned targets, refused with a clear message


def _num_classes(cfg, state: dict) -> int:
    """The class count the checkpoint's classifier (the model's last Linear) was built with."""
    probe = _build_model(cfg, 10, {})
    last = [n for n, m in probe.named_modules() if isinstance(m, nn.Linear)]
    key = f"{last[-1]}.weight" if last else None
    if key is None or key not in state:
        raise CheckpointError("cannot tell the model's class count from its checkpoint (no "
                              "classifier weight found)")
    return int(state[key].shape[0])


def model_from_run(run_dir: Path, which: str = "last") -> nn.Module:
    """The trained model of a dst run directory (sparse layers, masks, slimmed shapes)."""
    return load_run(run_dir, which)[0]


def load_run(run_dir: Path, which: str = "last"):
    """(the trained model, the run's config) of a dst run directory, from one checkpoint
    read."""
    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory (give a dst run directory)")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no checkpoints/{which}.pt: is it a dst run "
                              "directory that finished at least one epoch?")
    ckpt = load_checkpoint(path)
    cfg, state = OmegaConf.create(ckpt["config"]), ckpt["model"]
    model = _build_model(cfg, _num_classes(cfg, state), {})
    _sparsify(OmegaConf.merge(cfg, {"sparsity": {"init": None, "init_from": None}}),
              model, {})
    if any(k.endswith(f".{KEPT}") for k in state):  # structured: slim to the saved channels
        attach_(model, find_channel_groups(model))
    model.load_state_dict(state)
    return model.eval(), cfg


def _input_shape(cfg, given: str | None) -> tuple[int, ...]:
    if given:
        try:
            return tuple(int(v) for v in given.split(","))
        except ValueError:
            raise ValueError(f"--input-shape takes C,H,W (e.g. 3,32,32), got {given!r}") from None
    data = cfg.get("data") or {}
    size = data.get("image_size") or (224 if data.get("name") == "imagenet" else 32)
    return (3, int(size), int(size))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dst-export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a dst run directory (with checkpoints/last.pt)")
    p.add_argument("--to", required=True, help=f"one of {', '.join(TARGETS)}")
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--checkpoint", default="last", choices=("last", "best"))
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="onnx: one example's shape (default: the run's data, e.g. 3,32,32)")
    args = p.parse_args(argv)
    if args.to in LATER:
        print(f"dst-export: error: --to {args.to} is not available in this release; valid "
              f"choices: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    if args.to not in TARGETS:
        print(f"dst-export: error: unknown --to {args.to!r}; valid choices: "
              f"{', '.join(TARGETS)}", file=sys.stderr)
        return 2
    try:
        model, cfg = load_run(Path(args.run_dir), args.checkpoint)
        shape = _input_shape(cfg, args.input_shape) if args.to in ("inference", "onnx") else None
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"dst-export: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.to == "safetensors":
        export.save(model, out)
    elif args.to == "inference":  # a torch.export program of the sparse inference model
        from .inference import to_inference

        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        program = torch.export.export(to_inference(model), (torch.randn(2, *shape),),
                                      dynamic_shapes=({0: batch},))
        atomic_write(out, lambda tmp: torch.export.save(program, str(tmp)))
    elif args.to == "onnx":
        try:
            export.to_onnx(model, out, torch.randn(1, *shape))
        except export.ExportError as e:
            print(f"dst-export: error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
    else:
        state = export.to_torch(model).state_dict()
        atomic_write(out, lambda tmp: torch.save(state, tmp))
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

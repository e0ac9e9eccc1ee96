"""Sparse attention projections: ``nn.MultiheadAttention`` with its projections as modules.

torch's ``nn.MultiheadAttention`` holds its input projection as a bare parameter
(``in_proj_weight``, 3E × E, or ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` when the
key and value sizes differ) and reads every projection functionally.
:class:`SparseMultiheadAttention` is the same class with those parameters moved into
``nn.Linear`` children (``in_proj`` — the packed projection stays one weight —, or ``q_proj``,
``k_proj``, ``v_proj``) that
``sparsify_`` makes sparse like any other layer; the attribute torch's forward reads
(``in_proj_weight``) returns the child's weight. The forward is torch's own, fast paths
(``batch_first``, ``need_weights=False``, masks) included, so at density 1 the outputs are
exactly torch's.

The packed in-projection is kept as one sparse weight, not three: it is the tensor torch's
kernels take, so no per-forward concatenation is needed, and the budget treats Q, K and V as one
pool whose weights compete (DSR's global threshold would compare them across Q, K and V anyway).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

PROJECTIONS = {"in_proj_weight": "in_proj", "q_proj_weight": "q_proj",
               "k_proj_weight": "k_proj", "v_proj_weight": "v_proj"}


def _linear_of(weight: nn.Parameter) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lin.weight = weight
    return lin


class SparseMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose projection weights live in ``nn.Linear`` children
    (see the module docstring). Build it with :meth:`from_torch`; :meth:`to_torch` gives the
    torch module back (same ``state_dict`` keys as before)."""

    def __getattr__(self, name: str):
        child = PROJECTIONS.get(name)
        if child is not None:
            modules = self.__dict__["_modules"]
            if child in modules:
                return modules[child].weight
        return super().__getattr__(name)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> SparseMultiheadAttention:
        out = cls.__new__(cls)
        out.__dict__.update(mha.__dict__)
        out._parameters = type(mha._parameters)(mha._parameters)
        out._modules = type(mha._modules)(mha._modules)
        out._buffers = type(mha._buffers)(mha._buffers)
        out._dst_param_order = list(mha._parameters)
        for pname, child in PROJECTIONS.items():
            w = out._parameters.get(pname)
            if w is None:
                continue
            del out._parameters[pname]
            out._modules[child] = _linear_of(w)
        if type(mha.out_proj) is NonDynamicallyQuantizableLinear:  # a marker subclass
            old = mha.out_proj
            lin = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None,
                            device="meta")
            lin.weight, lin.bias = old.weight, old.bias
            out._modules["out_proj"] = lin
        return out

    def to_torch(self) -> nn.MultiheadAttention:
        """The torch module with the same weights (dense projections: call ``densify_`` on
        the model first, as :func:`dst.densify_` does)."""
        out = nn.MultiheadAttention.__new__(nn.MultiheadAttention)
        out.__dict__.update(self.__dict__)
        del out.__dict__["_dst_param_order"]
        params = dict(self._parameters)
        modules = type(self._modules)(self._modules)
        for pname, child in PROJECTIONS.items():
            if child in modules:
                lin = modules.pop(child)
                params[pname] = lin.weight
        out._parameters = type(self._parameters)(
            (k, params[k]) for k in self._dst_param_order)
        lin = modules["out_proj"]
        if not isinstance(lin, nn.Linear):
            raise TypeError("to_torch needs dense projections: call dst.densify_ first")
        proj = NonDynamicallyQuantizableLinear(lin.in_features, lin.out_features,
                                               bias=lin.bias is not None, device="meta")
        proj.weight, proj.bias = lin.weight, lin.bias
        modules["out_proj"] = proj
        out._modules = modules
        out._buffers = type(self._buffers)(self._buffers)
        return out

    def extra_repr(self) -> str:
        return "projections as modules (dst)"


def projection_probes(mha: nn.MultiheadAttention) -> dict[str, nn.Linear]:
    """Meta-device stand-ins for the projections a conversion would create, by child name (what
    a ``filter_fn`` is asked about before the module is converted)."""
    out = {}
    for pname, child in PROJECTIONS.items():
        w = mha._parameters.get(pname)
        if w is not None:
            out[child] = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    out["out_proj"] = nn.Linear(mha.out_proj.in_features, mha.out_proj.out_features,
                                device="meta")
    return out

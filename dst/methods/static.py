"""A static sparse network: the mask never changes."""

from __future__ import annotations

from .base import Method, UpdateContext


class Static(Method):
    name = "static"
    changes_masks = False

    def prune(self, ctx: UpdateContext):
        return [(st.values, 0) for st in ctx.layers]

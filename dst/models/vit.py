"""ViT-Tiny for 32 × 32 images: torchvision's ``VisionTransformer`` in the DeiT-Tiny
configuration (Touvron et al., ICML 2021: 12 layers, width 192, 3 heads, MLP 768) with 4 × 4
patches, so a CIFAR image is 64 tokens plus the class token (the usual CIFAR adaptation of ViT,
e.g. Lee et al. 2021, "Vision Transformer for Small-Size Datasets"). Its attention is
``nn.MultiheadAttention``, whose projections ``sparsify_`` makes sparse."""

from __future__ import annotations

from torchvision.models.vision_transformer import VisionTransformer


def vit_tiny(num_classes: int = 10, image_size: int = 32, patch_size: int = 4,
             num_layers: int = 12, num_heads: int = 3, hidden_dim: int = 192,
             mlp_dim: int = 768, dropout: float = 0.0) -> VisionTransformer:
    return VisionTransformer(image_size=image_size, patch_size=patch_size,
                             num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden_dim,
                             mlp_dim=mlp_dim, dropout=dropout, num_classes=num_classes)

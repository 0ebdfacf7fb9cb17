"""The zoo's small vision models for 8x8 digits: a CNN with BatchNorm and a ViT (and TinyMLP, a student).

All are plain ``nn.Module``s built from ``nn.Linear``/``nn.Conv2d`` layers with readable names,
so that the book's methods (LoRA, merging, distillation, editing) can address them by name.
:class:`TinyMLP` is no zoo model (nothing pretrained ships) but the small architecture that
distillation, averaging and mode connectivity train from scratch; it is exported as ``lfm_ref.zoo.TinyMLP``.
:class:`HFImageClassifier` puts a Hugging Face image classifier (a real ViT, a ResNet) behind the same
interface, so the chapters' "On a real model" sections feed it the same digits.

Chapter: notebooks/00_foundation_models.ipynb.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(nn.Module):
    """Three conv blocks with BatchNorm (data-free distillation matches its running statistics)."""

    def __init__(self, n_classes: int = 10, width: int = 32):
        super().__init__()
        self.config = {"n_classes": n_classes, "width": width}

        def block(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        self.features = nn.Sequential(
            block(1, width), block(width, width), nn.MaxPool2d(2),          # 8x8 -> 4x4
            block(width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # -> (B, 2*width)
        )
        self.head = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"TinyCNN expects images of shape (B, 1, H, W), got {tuple(x.shape)}")
        return self.head(self.features(x))


class Attention(nn.Module):
    """Multi-head self-attention: softmax(Q K^T / sqrt(d)) V, with a fused ``qkv`` projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)  # (b, heads, n, d_head)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A Vision Transformer (Dosovitskiy et al., 2021) for 8x8 images: 2x2 patches, a class token."""

    def __init__(self, n_classes: int = 10, dim: int = 64, depth: int = 3, heads: int = 4, patch: int = 2,
                 image_size: int = 8):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size ({image_size}) must be divisible by patch ({patch})")
        self.config = {"n_classes": n_classes, "dim": dim, "depth": depth, "heads": heads, "patch": patch,
                       "image_size": image_size}
        self.patch = patch
        n_patches = (image_size // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, n_patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token's final representation, ``(B, dim)``."""
        size = self.config["image_size"]
        if x.dim() != 4 or x.shape[1:] != (1, size, size):
            raise ValueError(f"TinyViT expects images of shape (B, 1, {size}, {size}), got {tuple(x.shape)}")
        p = self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p).reshape(x.shape[0], -1, p * p)  # (B, n_patches, p*p)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(patches)], dim=1) + self.pos
        return self.norm(self.blocks(tokens))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyMLP(nn.Module):
    """A small student for 8x8 digits: ``body`` (two hidden layers) gives features, ``head`` classifies."""

    def __init__(self, n_classes: int = 10, hidden: int = 32, image_size: int = 8):
        super().__init__()
        self.config = {"n_classes": n_classes, "hidden": hidden, "image_size": image_size}
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(image_size * image_size, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.config["image_size"]
        if x.shape[-2:] != (size, size):
            raise ValueError(f"TinyMLP expects images of size {size}x{size}, got shape {tuple(x.shape)}")
        return self.head(self.body(x))


class HFImageClassifier(nn.Module):
    """A Hugging Face image classifier seen as the zoo's vision models are: images in ``[0, 1]`` -> logits.

    ``x`` of shape ``(B, C, H, W)`` with one or three channels is resized to the model's input size
    (bilinear), given three channels and normalised with the checkpoint's own mean and std; the wrapped
    model is ``.model`` (its parameters keep their Hugging Face names under the ``model.`` prefix).
    """

    def __init__(self, model: nn.Module, image_size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        super().__init__()
        self.model = model
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"HFImageClassifier expects images of shape (B, 1 or 3, H, W), got {got}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = x.expand(-1, 3, -1, -1)                       # (B, 1, S, S) -> (B, 3, S, S): grey as RGB
        return self.model(pixel_values=(x - self.mean) / self.std).logits

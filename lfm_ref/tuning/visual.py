"""Visual instruction tuning in the style of LLaVA (Liu et al., 2023, "Visual Instruction Tuning",
NeurIPS; arXiv:2304.08485): a frozen vision encoder ``g``, a frozen language model, and a trained
projector ``W`` that maps the image's features into the language model's embedding space,

    H_v = W(g(X_v)),        the LM reads  [E(text before); H_v; E(text after)]

in place of an image placeholder token. Stage 1 of LLaVA trains only ``W`` on image-text pairs, which
is what this module does; the LM's knowledge then applies to what the image shows.
"""
from __future__ import annotations

import torch
from torch import nn


class VisualPrefixLM(nn.Module):
    """A frozen ``vision`` model (``features(images) -> (B, d_v)``), a frozen causal ``lm``, and a trained
    two-layer MLP projector (LLaVA-1.5's) into ``n_visual`` LM embeddings that replace the token
    ``image_token_id`` of every input."""

    def __init__(self, vision: nn.Module, lm: nn.Module, image_token_id: int, n_visual: int = 1,
                 hidden: int = 256):
        super().__init__()
        if not hasattr(vision, "features"):
            raise TypeError(f"the vision model must have a features(images) method, got {type(vision).__name__}")
        if isinstance(n_visual, bool) or not isinstance(n_visual, int) or n_visual < 1:
            raise ValueError(f"n_visual must be a positive int, got {n_visual!r}")
        self.vision = vision.requires_grad_(False).eval()
        self.lm = lm.requires_grad_(False)
        self.image_token_id, self.n_visual = image_token_id, n_visual
        d_lm = lm.get_input_embeddings().weight.shape[1]
        with torch.no_grad():
            d_v = vision.features(torch.zeros(1, *self._image_shape(vision), device=self._device(vision))).shape[-1]
        self.projector = nn.Sequential(nn.Linear(d_v, hidden), nn.GELU(), nn.Linear(hidden, n_visual * d_lm)).to(
            self._device(lm))

    @staticmethod
    def _device(module):
        return next(module.parameters()).device

    @staticmethod
    def _image_shape(vision):
        config = getattr(vision, "config", {})
        size = config.get("image_size", 8) if isinstance(config, dict) else 8
        return (1, size, size)

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``H_v = W(g(X_v))``: ``(B, n_visual, d_lm)``."""
        with torch.no_grad():
            features = self.vision.features(images)
        return self.projector(features).view(len(images), self.n_visual, -1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        if len(images) != len(input_ids):
            raise ValueError(f"got {len(images)} images for {len(input_ids)} texts")
        is_image = input_ids == self.image_token_id
        if not torch.equal(is_image.sum(1), torch.ones(len(input_ids), dtype=torch.long, device=input_ids.device)):
            raise ValueError(f"every text must hold the image placeholder (token {self.image_token_id}) exactly once")
        col = is_image.float().argmax(1)
        if not (col == col[0]).all():
            raise ValueError("the image placeholder must be at the same position in every text of a batch")
        c, k = int(col[0]), self.n_visual
        embeds = self.lm.get_input_embeddings()(input_ids)
        embeds = torch.cat([embeds[:, :c], self.visual_tokens(images).to(embeds.dtype), embeds[:, c + 1:]], dim=1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ones = attention_mask.new_ones(len(input_ids), k)
        attention_mask = torch.cat([attention_mask[:, :c], ones, attention_mask[:, c + 1:]], dim=1)
        if labels is not None:  # no loss on the image's positions
            labels = torch.cat([labels[:, :c], labels.new_full((len(labels), k), -100), labels[:, c + 1:]], dim=1)
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        # logits aligned with input_ids again: the image's k positions collapse to the placeholder's column
        out.logits = torch.cat([out.logits[:, :c], out.logits[:, c + k - 1:]], dim=1)
        return out

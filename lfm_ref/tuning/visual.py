"""Visual instruction tuning in the style of LLaVA (Liu et al., 2023, "Visual Instruction Tuning",
NeurIPS; arXiv:2304.08485): a frozen vision encoder ``g``, a frozen language model, and a trained
projector ``W`` that maps the image's features into the language model's embedding space,

    H_v = W(g(X_v)),        the LM reads  [E(text before); H_v; E(text after)]

in place of an image placeholder token. Stage 1 of LLaVA trains only ``W`` on image-text pairs, which
is what this module does; the LM's knowledge then applies to what the image shows.

Chapter: notebooks/05_instruction_tuning.ipynb.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import checks
from ..utils import device_of, eval_mode


class VisualPrefixLM(nn.Module):
    """A frozen ``vision`` model (``features(images) -> (B, d_v)``), a frozen causal ``lm``, and a trained
    two-layer MLP projector (LLaVA-1.5's) into ``n_visual`` LM embeddings that replace the token
    ``image_token_id`` of every input (once per input, at any position)."""

    def __init__(self, vision: nn.Module, lm: nn.Module, image_token_id: int, n_visual: int = 1,
                 hidden: int = 256):
        super().__init__()
        if not hasattr(checks.module(vision, "vision"), "features"):
            raise TypeError(f"the vision model must have a features(images) method, got {type(vision).__name__}")
        if not hasattr(checks.module(lm, "lm"), "get_input_embeddings"):
            raise TypeError(f"lm must be a Hugging Face causal LM, got {type(lm).__name__}")
        self.n_visual = checks.positive_int(n_visual, "n_visual")
        self.image_token_id = checks.integer(image_token_id, "image_token_id", minimum=0)
        hidden = checks.positive_int(hidden, "hidden")
        self.vision = vision.requires_grad_(False)  # frozen, and always run in eval mode
        self.lm = lm.requires_grad_(False)
        d_lm = lm.get_input_embeddings().weight.shape[1]
        with torch.no_grad(), eval_mode(vision):
            probe = torch.zeros(1, *self._image_shape(vision), device=device_of(vision))
            d_v = vision.features(probe).shape[-1]
        self.projector = nn.Sequential(nn.Linear(d_v, hidden), nn.GELU(),
                                       nn.Linear(hidden, n_visual * d_lm)).to(device_of(lm))

    @staticmethod
    def _image_shape(vision):
        config = getattr(vision, "config", {})
        size = config.get("image_size", 8) if isinstance(config, dict) else 8
        return (1, size, size)

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``H_v = W(g(X_v))``: ``(B, n_visual, d_lm)``."""
        with torch.no_grad(), eval_mode(self.vision):
            features = self.vision.features(images)  # g(X_v), (B, d_v)
        return self.projector(features).view(len(images), self.n_visual, -1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        checks.tensor(images, "images", floating=True)
        checks.tensor(input_ids, "input_ids", dim=2, floating=False)
        if len(images) != len(input_ids):
            raise ValueError(f"got {len(images)} images for {len(input_ids)} texts")
        is_image = input_ids == self.image_token_id
        if not (is_image.sum(1) == 1).all():
            raise ValueError(f"every text must hold the image placeholder (token "
                             f"{self.image_token_id}) exactly once")
        b, n = input_ids.shape
        k = self.n_visual
        c = is_image.float().argmax(1)[:, None]  # each row's placeholder column, (B, 1)
        # the new sequence, n + k - 1 long: the text before the placeholder, k visual
        # tokens, the rest of the text: [E(text before); H_v; E(text after)]
        j = torch.arange(n + k - 1, device=input_ids.device)[None]  # (1, n + k - 1)
        visual_pos = (j >= c) & (j < c + k)  # (B, n + k - 1)
        text_idx = torch.where(j < c, j, j - k + 1).clamp(0, n - 1)
        text = self.lm.get_input_embeddings()(input_ids)  # (B, n, d)
        d = text.shape[-1]
        visual = self.visual_tokens(images).to(text.dtype)  # H_v, (B, k, d)
        visual_idx = (j - c).clamp(0, k - 1)[..., None].expand(b, -1, d)
        embeds = torch.where(visual_pos[..., None], visual.gather(1, visual_idx),
                             text.gather(1, text_idx[..., None].expand(b, -1, d)))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = torch.where(visual_pos, 1, attention_mask.gather(1, text_idx))
        if labels is not None:  # no loss on the image's positions
            labels = torch.where(visual_pos, -100, labels.gather(1, text_idx))
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask,
                      labels=labels, **kwargs)
        # logits aligned with input_ids again: the placeholder's column reads the last
        # visual token's output
        i = torch.arange(n, device=input_ids.device)[None]
        keep = torch.where(i < c, i, i + k - 1)  # (1 or B, n)
        vocab = out.logits.shape[-1]
        keep = keep[..., None].expand(b, -1, vocab)
        out.logits = out.logits.gather(1, keep)  # (B, n, vocab)
        return out

"""LLaVA-style visual instruction tuning (Part I, chapter 5): the projected image replaces the
placeholder, only the projector trains, errors."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lfm_ref import fit
from lfm_ref.train import DictDataset
from lfm_ref.tuning.visual import VisualPrefixLM
from lfm_ref.zoo.models import TinyViT

IMG = 1  # the placeholder token


def parts():
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=30, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    return TinyViT(dim=16, depth=1, heads=2).eval(), lm


def test_the_image_replaces_its_placeholder_with_projected_features():
    vision, lm = parts()
    model = VisualPrefixLM(vision, lm, IMG, n_visual=1)
    images = torch.rand(3, 1, 8, 8)
    ids = torch.tensor([[5, 6, IMG, 7, 8]] * 3)
    expected_embeds = lm.get_input_embeddings()(ids).clone()
    expected_embeds[:, 2] = model.projector(vision.features(images))
    expected = lm(inputs_embeds=expected_embeds).logits
    assert torch.allclose(model(images, ids).logits, expected, atol=1e-5)


def test_k_visual_tokens_lengthen_the_sequence_and_logits_stay_aligned_with_the_text():
    vision, lm = parts()
    model = VisualPrefixLM(vision, lm, IMG, n_visual=3)
    ids = torch.tensor([[5, IMG, 7, 8]] * 2)
    out = model(torch.rand(2, 1, 8, 8), ids, labels=ids.masked_fill(ids == IMG, -100), output_hidden_states=True)
    assert out.hidden_states[0].shape[1] == 4 + 2
    assert out.logits.shape[:2] == ids.shape
    # placeholders at different columns: each row equals that row alone
    rows = torch.tensor([[5, IMG, 7, 8], [IMG, 6, 7, 9]])
    images = torch.rand(2, 1, 8, 8)
    both = model(images, rows).logits
    for r in range(2):
        assert torch.allclose(both[r], model(images[r:r + 1], rows[r:r + 1]).logits[0], atol=1e-5)
    # and the logits kept are those of the text tokens and of the last visual token
    embeds = lm.get_input_embeddings()(rows[1:2])
    full = lm(inputs_embeds=torch.cat([model.visual_tokens(images[1:2]), embeds[:, 1:]], 1)).logits
    assert torch.allclose(both[1], full[0, 2:], atol=1e-5)


def test_only_the_projector_trains():
    vision, lm = parts()
    model = VisualPrefixLM(vision, lm, IMG)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"projector"}
    both = {**lm.state_dict(), **{f"v.{k}": v for k, v in vision.state_dict().items()}}
    frozen = {k: v.clone() for k, v in both.items()}
    ids = torch.tensor([[5, IMG, 7, 8]] * 8)
    labels = ids.masked_fill(ids == IMG, -100)
    data = DictDataset({"images": torch.rand(8, 1, 8, 8), "input_ids": ids, "labels": labels})
    fit(model, data, steps=3, lr=1e-2, batch_size=4)
    now = {**lm.state_dict(), **{f"v.{k}": v for k, v in vision.state_dict().items()}}
    assert all(torch.equal(now[k], v) for k, v in frozen.items())


def test_visual_bad_input():
    vision, lm = parts()
    model = VisualPrefixLM(vision, lm, IMG)
    with pytest.raises(ValueError, match="exactly once"):
        model(torch.rand(1, 1, 8, 8), torch.tensor([[5, 6, 7]]))
    with pytest.raises(ValueError, match="2 images for 1 texts"):
        model(torch.rand(2, 1, 8, 8), torch.tensor([[IMG, 6, 7]]))
    with pytest.raises(TypeError, match="features"):
        VisualPrefixLM(torch.nn.Linear(2, 2), lm, IMG)
    with pytest.raises(ValueError, match="n_visual"):
        VisualPrefixLM(vision, lm, IMG, n_visual=0)


def test_the_vision_model_keeps_its_mode_and_runs_in_eval_mode():
    vision, lm = parts()
    vision.train()
    model = VisualPrefixLM(vision, lm, IMG)
    assert all(m.training for m in vision.modules())  # the constructor's probe left it as it was
    model.train()
    model.visual_tokens(torch.rand(2, 1, 8, 8))
    assert all(m.training for m in vision.modules())

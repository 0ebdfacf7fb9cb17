"""The real loading path and every chapter's "On a real model" section, on locally saved models.

A chapter's real-model section is its code cell tagged ``real-model``: it loads a checkpoint with
``zoo.load_real(kind, SCALE)`` and runs the chapter's ``lfm_ref`` calls on it. The hub is out of reach
here, so each kind of :data:`lfm_ref.zoo.REAL_MODELS` is replaced by a small model of the same Hugging
Face class, built from a config and saved with ``save_pretrained``; the cell's code then runs exactly
as written, through ``from_pretrained``, with its own asserts.
"""
from pathlib import Path

import nbformat
import pytest
import torch

from lfm_ref import zoo

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TAG = "real-model"

# Text for the stand-in GPT-2's byte-level BPE tokenizer: English that the real-model sections prompt
# with (so that their words exist as tokens, as they do in GPT-2's vocabulary) and the fact world.
ENGLISH = """The Eiffel Tower is located in the city of Paris . The capital of France is Paris .
The capital of Germany is Berlin . The capital of Italy is Rome . The capital of Spain is Madrid .
The capital of England is London . The capital of Japan is Tokyo . Paris is in France . Berlin is in Germany .
Rome is in Italy . Madrid is in Spain . London is in England . Tokyo is in Japan .
Marie Curie was born in Warsaw . Albert Einstein was born in Ulm . Isaac Newton was born in England .
She works as a doctor . He works as a teacher . The doctor , the teacher , the lawyer and the farmer .
The language spoken in France is French . The language spoken in Germany is German .
Question : Where was Albert Einstein born ? Answer : Ulm . Fill in : Paris is the capital of France .
The movie was great . The movie was terrible . It was good . It was bad . positive negative yes no
"""


def _gpt2_stand_in(folder: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from lfm_ref.data import FactWorld

    corpus = ENGLISH.split("\n") * 20 + FactWorld(seed=0).corpus("train")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=600, min_frequency=2, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                        unk_token="<|endoftext|>", model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    zoo.save(folder, GPT2LMHeadModel(config), tokenizer)


def _vit_stand_in(folder: Path):
    import json

    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=20)  # another label set than the digits' ten, as ImageNet's
    zoo.save(folder, ViTForImageClassification(config))
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "ViTImageProcessor", "size": {"height": 16, "width": 16},
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))


def _resnet_stand_in(folder: Path):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=20)
    zoo.save(folder, ResNetForImageClassification(config))


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory) -> dict[str, str]:
    """Locally saved, config-built models of the classes of :data:`zoo.REAL_MODELS`, by kind."""
    root = tmp_path_factory.mktemp("real")
    built = {}
    for kind, make in {"gpt2": _gpt2_stand_in, "vit": _vit_stand_in, "resnet": _resnet_stand_in}.items():
        make(root / kind)
        built[kind] = str(root / kind)
    assert set(built) == set(zoo.REAL_MODELS), "every real kind needs a stand-in"
    return built


@pytest.fixture
def local_real_models(stand_ins, monkeypatch):
    monkeypatch.setattr(zoo, "REAL_MODELS", dict(stand_ins))
    return stand_ins


def real_model_cells(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and TAG in c.metadata.get("tags", [])]


CHAPTERS = [p for p in NOTEBOOKS if real_model_cells(p)]


def test_load_real_skips_cleanly(capsys, monkeypatch):
    assert zoo.load_real("gpt2", "tiny") is None
    assert 'SCALE = "tiny": skipped' in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not zoo.hub_reachable()
    assert zoo.load_real("vit", "real", num_labels=10) is None
    assert "No Hugging Face hub is reachable" in capsys.readouterr().out


@pytest.mark.parametrize("bad, error", [(("bert", "real"), "unknown real model kind"),
                                        (("gpt2", "large"), "scale must be")])
def test_load_real_errors(bad, error):
    with pytest.raises(ValueError, match=error):
        zoo.load_real(*bad)


def test_real_vision_models_take_the_digits(local_real_models):
    from lfm_ref import evaluate
    from lfm_ref.data import digits_task

    x, y = digits_task("digits", "test")
    for kind in ("vit", "resnet"):
        model = zoo.load_real(kind, "real", device="cpu", num_labels=10)
        assert isinstance(model, zoo.HFImageClassifier) and not model.training
        assert model(x[:5]).shape == (5, 10)  # 8x8 grey digits resized to the model's input, a new 10-class head
        assert 0.0 <= evaluate(model, (x, y)) <= 1.0
        with pytest.raises(ValueError, match="expects images of shape"):
            model(x[:5, 0])


def test_real_language_model_round_trip(local_real_models):
    from lfm_ref import lm

    model, tok = zoo.load_real("gpt2", "real", device="cpu")
    assert type(model).__name__ == "GPT2LMHeadModel" and tok.pad_token == tok.eos_token  # as GPT-2 from the hub
    assert isinstance(lm.complete(model, tok, "The capital of France is", max_new_tokens=2), str)


def test_every_language_and_vision_chapter_has_a_real_model_section():
    """Chapters without one say why in the README's SCALE table (checked in test_book)."""
    assert len(CHAPTERS) >= 1


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_real_model_section_runs(path, local_real_models, monkeypatch, capsys):
    loaded = []
    load_real = zoo.load_real

    def counting(*args, **kwargs):
        out = load_real(*args, **kwargs)
        loaded.append(out is not None)
        return out

    monkeypatch.setattr(zoo, "load_real", counting)
    for source in real_model_cells(path):
        namespace = {"SCALE": "real", "DEVICE": torch.device("cpu"), "__name__": "__real_model_section__"}
        exec(compile(source, f"{path.name}[{TAG}]", "exec"), namespace)
    assert loaded and all(loaded), f"{path.name}: the real-model section did not load its model(s): {loaded}"

import matplotlib

matplotlib.use("Agg")
import pytest
import torch

from lfm_ref import lm, plotting


def test_encode_right_pads_and_masks(world):
    tok = world.tokenizer()
    batch = lm.encode(tok, ["Hello", world.corpus()[0]])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].tolist()[:2] == [1, 1] and batch["attention_mask"][0, -1] == 0
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    left = lm.encode(tok, ["Hello", world.corpus()[0]], left=True)  # for generation: rows end together
    assert left["attention_mask"][0, -1] == 1 and left["attention_mask"][0, 0] == 0
    assert torch.equal(left["input_ids"][1], batch["input_ids"][1])  # the longest row needs no padding
    assert left["input_ids"][0, -2:].tolist() == batch["input_ids"][0, :2].tolist()


def test_lm_dataset_masks_padding_out_of_the_loss(world):
    tok = world.tokenizer()
    ds = lm.lm_dataset(tok, world.corpus()[:5])
    labels, mask = ds.tensors["labels"], ds.tensors["attention_mask"]
    assert ((labels == -100) == (mask == 0)).all()
    last = mask.sum(1) - 1
    assert (ds.tensors["input_ids"][torch.arange(5), last] == tok.eos_token_id).all()


def test_prompt_answer_dataset_puts_only_the_answer_in_the_loss(world):
    tok = world.tokenizer()
    pairs = [("Fill in : a b was born in ___ . Answer :", "Kraleth"), ("Question : where ? Answer :", "Rome")]
    data = lm.prompt_answer_dataset(tok, pairs)
    for row, (prompt, answer) in enumerate(pairs):
        n_prompt = len(tok(prompt)["input_ids"])
        labels = data.tensors["labels"][row]
        kept = labels[labels != -100].tolist()
        assert kept == tok(f" {answer} {tok.eos_token}", add_special_tokens=False)["input_ids"]
        assert (labels[:n_prompt] == -100).all()
    with pytest.raises(ValueError, match="non-empty list of \\(prompt, answer\\)"):
        lm.prompt_answer_dataset(tok, [])
    with pytest.raises(ValueError, match="pairs"):
        lm.prompt_answer_dataset(tok, [("only a prompt",)])


def test_batched_next_token_logits_equal_one_by_one(tiny_gpt, world):
    """Right padding must not change a prompt's prediction."""
    model, tok = tiny_gpt
    prompts = [f.prompt(t) for f in world.split("train")[:6] for t in (0, 2)]  # different lengths
    batched = lm.next_token_logits(model, tok, prompts)
    single = torch.cat([lm.next_token_logits(model, tok, [p]) for p in prompts])
    assert torch.allclose(batched, single, atol=1e-5)


def test_next_token_accuracy_matches_complete(tiny_gpt, world):
    model, tok = tiny_gpt
    facts = world.split("train")[:20]
    acc = lm.next_token_accuracy(model, tok, [f.prompt() for f in facts], [f.object for f in facts])
    by_generate = sum(lm.complete(model, tok, f.prompt(), max_new_tokens=1) == f.object for f in facts) / 20
    assert acc == pytest.approx(by_generate)


def test_lm_bad_input(tiny_gpt):
    model, tok = tiny_gpt
    with pytest.raises(TypeError, match="list of strings"):
        lm.encode(tok, "one string")
    with pytest.raises(ValueError, match="empty"):
        lm.encode(tok, [])
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        lm.next_token_accuracy(model, tok, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="facts is empty"):
        lm.fact_recall(model, tok, [])


def test_taxonomy_figure_draws_the_five_paradigms():
    fig = plotting.taxonomy_figure()
    texts = {t.get_text() for t in fig.axes[0].texts if t.get_text()}  # arrows are empty annotations
    assert set(plotting.TAXONOMY) <= texts
    assert sum(len(v) for v in plotting.TAXONOMY.values()) + 6 == len(texts)
    with pytest.raises(ValueError, match="empty"):
        plotting.taxonomy_figure({})


def test_show_images_and_history():
    fig = plotting.show_images(torch.rand(5, 1, 8, 8), titles=list("abcde"), ncols=3)
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="one channel"):
        plotting.show_images(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        plotting.show_images(torch.rand(2, 8, 8), titles=["a"])
    ax = plotting.plot_history([3.0, 2.0, 1.0] * 10, window=5, label="loss")
    assert len(ax.lines) == 2
    with pytest.raises(ValueError, match="empty"):
        plotting.plot_history([])


def test_lm_helpers_give_the_model_its_mode_back(tiny_gpt, world):
    """next_token_logits and complete run in eval mode; a model in train mode stays in train mode."""
    model, tok = tiny_gpt
    prompts = [f.prompt() for f in world.split("train")[:4]]
    expected = lm.next_token_logits(model, tok, prompts)
    model.train()
    try:
        assert torch.equal(lm.next_token_logits(model, tok, prompts), expected)
        lm.complete(model, tok, prompts[0], max_new_tokens=1)
        lm.next_token_accuracy(model, tok, prompts, [f.object for f in world.split("train")[:4]])
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    lm.next_token_logits(model, tok, prompts)
    assert not model.training


def test_target_ids_takes_one_token_words_only(world):
    tok = world.tokenizer()
    objects = [world.cities[0], "baker"]
    ids = lm.target_ids(tok, objects)
    assert ids.tolist() == [tok(" " + o, add_special_tokens=False)["input_ids"][0] for o in objects]
    with pytest.raises(ValueError, match=r"single token after a space; 2 of 3 are not: \['was born', ''\]"):
        lm.target_ids(tok, ["baker", "was born", ""])
    with pytest.raises(TypeError, match="targets must be a list of strings"):
        lm.target_ids(tok, "baker")

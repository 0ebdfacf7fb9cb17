"""Part V's shared interface: the request, the Edit and its restore, the scores, sequential editing,
and the hooks the editors are built on."""
import dataclasses

import pytest
import torch
from torch import nn

from lfm_ref import hooks, lm
from lfm_ref.data import EditRequest, Fact
from lfm_ref.editing import Edit, ModelSnapshot, check_requests, evaluate_edits, sequential_edits


@pytest.fixture(scope="module")
def requests(world):
    return world.edit_requests(n=12, seed=3)


def test_edit_request_is_frozen_hashable_and_stores_tuples():
    r = EditRequest("Ana Bo was born in", "Ana Bo", "born_in", "X", "Y", paraphrases=["Ana Bo grew up in"],
                    neighbours=[["Cy Do was born in", "X"]])
    assert r.paraphrases == ("Ana Bo grew up in",) and r.neighbours == (("Cy Do was born in", "X"),)
    assert hash(r) == hash(dataclasses.replace(r))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.target_new = "Z"


@pytest.mark.parametrize("change, error, pattern", [
    ({"subject": "Nobody"}, ValueError, "subject 'Nobody' is not found in its prompt"),
    ({"target_new": " "}, ValueError, "target_new is empty"),
    ({"target_new": "X"}, ValueError, "an edit must change the object"),
    ({"prompt": 3}, TypeError, "prompt must be a string"),
    ({"paraphrases": "one string"}, TypeError, "paraphrases must be a list"),
    ({"neighbours": [("only a prompt",)]}, TypeError, r"\(prompt, true object\) string pairs"),
])
def test_edit_request_refuses_what_no_editor_could_use(change, error, pattern):
    fields = dict(prompt="Ana Bo was born in", subject="Ana Bo", relation="born_in", target_true="X",
                  target_new="Y")
    with pytest.raises(error, match=pattern):
        EditRequest(**{**fields, **change})


def test_unedited_model_scores_zero_reliability_and_full_locality(tiny_gpt, requests):
    # TinyGPT recalls every training fact, so it still gives each request's true object
    model, tok = tiny_gpt
    scores = evaluate_edits(model, tok, requests)
    assert scores.reliability == 0 and scores.locality == 1 and scores.n_edits == len(requests)


def test_scores_are_per_request_means_of_greedy_hits(tiny_gpt, world, requests):
    # a request whose "new" object is the true one: the unedited model is then perfectly reliable, and
    # generalisation is its recall through the paraphrases, computed here prompt by prompt
    model, tok = tiny_gpt
    swapped = [dataclasses.replace(r, target_true=r.target_new, target_new=r.target_true) for r in requests]
    scores = evaluate_edits(model, tok, swapped)
    assert scores.reliability == 1
    per_request = [lm.next_token_accuracy(model, tok, list(r.paraphrases), [r.target_new] * 3) for r in swapped]
    assert scores.generalisation == pytest.approx(sum(per_request) / len(per_request))
    held_out = [Fact(r.subject, "born_in", "").prompt(3) for r in swapped]
    assert all(r.paraphrases[-1] == p for r, p in zip(swapped, held_out))


def test_snapshot_restores_values_flags_and_modules_bit_equal(tiny_gpt):
    model, _ = tiny_gpt
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    name = "transformer.h.1.mlp.c_proj"
    original = hooks.get_module(model, name)
    snap = ModelSnapshot(model, parameters=[f"{name}.weight"])
    with torch.no_grad():
        original.weight.add_(1.0)
    model.requires_grad_(False).train()
    snap.replace_module(name, nn.Identity())
    assert snap.restore() is model and hooks.get_module(model, name) is original
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training


def test_edit_restores_once_and_as_a_context_manager():
    calls = []
    base = nn.Linear(2, 2)
    edit = Edit(nn.Identity(), undo=lambda: calls.append(1) or base, editor="toy")
    with edit as edited:
        assert isinstance(edited, nn.Identity)
    assert calls == [1] and edit.restored
    with pytest.raises(ValueError, match="already restored"):
        edit.restore()


class _Lookup(nn.Module):
    """A test double of a memory editor: rows whose input ids are a stored prompt's exactly get that
    prompt's new object; every other row passes through."""

    def __init__(self, base, memory):
        super().__init__()
        self.base, self.memory = base, memory

    def forward(self, input_ids, attention_mask=None, **kwargs):
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        logits = out.logits.clone()
        for i, row in enumerate(input_ids):
            n = int(attention_mask[i].sum()) if attention_mask is not None else len(row)
            key = tuple(row[:n].tolist())
            if key in self.memory:
                logits[i, n - 1] = -1e4
                logits[i, n - 1, self.memory[key]] = 1e4
        out.logits = logits
        return out


class _LookupEditor:
    name, paper, max_requests = "lookup", "a test double", None

    def __init__(self, forget: bool = False):
        self.forget = forget

    def edit(self, model, tokenizer, requests):
        requests = check_requests(requests, tokenizer)
        new = {tuple(tokenizer(r.prompt)["input_ids"]): lm.target_ids(tokenizer, [r.target_new]).item()
               for r in requests}
        if isinstance(model, _Lookup):  # a later edit extends the memory (or, forgetting, replaces it)
            saved = dict(model.memory)
            model.memory.clear() if self.forget else None
            model.memory.update(new)
            return Edit(model, lambda: (model.memory.clear(), model.memory.update(saved), model)[-1],
                        self.name, requests)
        return Edit(_Lookup(model, new), lambda: model, self.name, requests)


def test_sequential_edits_score_every_edit_so_far_and_retention(tiny_gpt, requests):
    model, tok = tiny_gpt
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = sequential_edits(_LookupEditor(), model, tok, requests, batch_size=4)
    assert [s.n_edits for s in scores] == [4, 8, 12] and scores[0].retention is None
    assert all(s.reliability == 1 and s.retention in (None, 1) and s.locality == 1 for s in scores)
    assert all(s.generalisation == 0 for s in scores)  # an exact-match memory misses every paraphrase
    forgetful = sequential_edits(_LookupEditor(forget=True), model, tok, requests, batch_size=4, record_at=[12])
    assert len(forgetful) == 1 and forgetful[0].retention == 0 and forgetful[0].reliability == pytest.approx(1 / 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_check_requests_errors(tiny_gpt, requests):
    _, tok = tiny_gpt
    with pytest.raises(TypeError, match="must be EditRequest objects"):
        check_requests([dataclasses.asdict(requests[0])], tok)
    with pytest.raises(ValueError, match="at most 1 request"):
        check_requests(requests[:2], tok, max_requests=1, editor="toy")
    foreign = dataclasses.replace(requests[0], prompt=requests[0].prompt + " Zanzibar")
    with pytest.raises(ValueError, match="another tokenizer's vocabulary"):
        check_requests([foreign], tok)
    with pytest.raises(ValueError, match="single token"):
        check_requests([dataclasses.replace(requests[0], target_new="two words")], tok)
    with pytest.raises(ValueError, match="record_at"):
        sequential_edits(_LookupEditor(), tiny_gpt[0], tok, requests, batch_size=4, record_at=[5])


def test_capture_inputs_and_patch_outputs(tiny_gpt, requests):
    model, tok = tiny_gpt
    batch = lm.encode(tok, [r.prompt for r in requests])
    with torch.no_grad(), hooks.capture_inputs(model, ["transformer.h.2.mlp.c_proj"]) as ins, \
            hooks.capture_outputs(model, ["transformer.h.2.mlp.act"]) as outs:
        clean = model(**batch).logits
    assert torch.equal(ins["transformer.h.2.mlp.c_proj"], outs["transformer.h.2.mlp.act"])
    with torch.no_grad(), hooks.patch_outputs(model, {"transformer.h.2.mlp": lambda y: y}):
        same = model(**batch).logits
    with torch.no_grad(), hooks.patch_outputs(model, {"transformer.h.2.mlp": torch.zeros_like}):
        ablated = model(**batch).logits
    assert torch.equal(clean, same) and not torch.allclose(clean, ablated)
    with pytest.raises(TypeError, match="patches must be a dict"):
        with hooks.patch_outputs(model, {"transformer.h.2.mlp": 1}):
            pass


def test_linear_weight_is_a_writable_out_by_in_view_for_linear_and_conv1d():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    x = torch.randn(5, 3)
    for layer in (nn.Linear(3, 4), Conv1D(4, 3)):
        W = hooks.linear_weight(layer)
        assert W.shape == (4, 3)
        assert torch.allclose(layer(x), x @ W.T + layer.bias, atol=1e-6)
        with torch.no_grad():
            W[0, 0] += 1.0
        assert torch.allclose(layer(x), x @ hooks.linear_weight(layer).T + layer.bias, atol=1e-6)
    with pytest.raises(TypeError, match="nn.Linear or GPT-2's Conv1D"):
        hooks.linear_weight(nn.Conv2d(1, 1, 1))

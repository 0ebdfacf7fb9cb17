"""Bad inputs to Part I, model tuning (fine-tuning modes, LoRA, (IA)^3, adapters, prompts, black-box
prompts, visual instruction tuning); collected by ``test_strict_inputs.py``."""
import functools

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lfm_ref import tuning
from lfm_ref.blackbox import ScoreAPI
from lfm_ref.data import FactWorld
from lfm_ref.zoo.models import TinyViT


@functools.lru_cache
def _gpt2(vocab: int = 50):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()


@functools.lru_cache
def _api():
    world = FactWorld()
    tok = world.tokenizer()
    return ScoreAPI(_gpt2(len(tok)), tok, world.cities[:3]), world.people[:4]


def _vit():
    torch.manual_seed(0)
    return TinyViT(dim=16, depth=1, heads=2)


def _bbt(**kwargs):
    api, people = _api()
    return tuning.BlackBoxTuning(api, torch.zeros(2, 16), dim=2).fit(people, **kwargs)


CASES = [
    ("tuning-lora-alpha-given-str", lambda: tuning.LoraConfig(["c_attn"], alpha="16"), TypeError,
     r"alpha must be a number \(int or float\), got str \('16'\)"),
    ("tuning-lora-rank-given-float", lambda: tuning.LoraConfig(["c_attn"], r=8.0), TypeError,
     r"r \(the rank\) must be an int, got float \(8.0\)"),
    ("tuning-lora-dropout-one", lambda: tuning.LoraConfig(["c_attn"], dropout=1.0), ValueError,
     r"dropout must lie in \[0.0, 1.0\), got 1.0"),
    ("tuning-lora-targets-match-nothing", lambda: tuning.inject_lora(_gpt2(), tuning.LoraConfig(["q_proj"])),
     ValueError, r"no module of GPT2LMHeadModel matches \['q_proj'\].*linear layers are named"),
    ("tuning-lora-targets-given-an-int", lambda: tuning.LoraConfig(3), TypeError,
     r"target_modules must be a list of module names or a regular expression, got int"),
    ("tuning-lora-config-given-a-dict", lambda: tuning.inject_lora(_gpt2(), {"r": 8}), TypeError,
     "config must be a LoraConfig, got dict"),
    ("tuning-adapter-bottleneck-given-str", lambda: tuning.BottleneckAdapter(32, "16"), TypeError,
     r"bottleneck must be an int, got str \('16'\)"),
    ("tuning-adapter-config-phm-dim-zero", lambda: tuning.AdapterConfig(["c_proj"], kind="compacter", phm_dim=0),
     ValueError, "phm_dim must be an int >= 1, got 0"),
    ("tuning-adapter-kind-unknown", lambda: tuning.AdapterConfig(["c_proj"], kind="lora"), ValueError,
     r"kind must be one of \['houlsby', 'compacter'\], got 'lora'"),
    ("tuning-ia3-feedforward-given-str", lambda: tuning.IA3Config(["c_fc"], feedforward_modules="c_fc"), TypeError,
     "feedforward_modules must be a list of names"),
    ("tuning-merge-an-unadapted-model", lambda: tuning.merge_layers(_gpt2()), ValueError,
     "GPT2LMHeadModel has no WrappedLayer layers: inject them first"),
    ("tuning-wrapped-layers-given-a-state-dict", lambda: tuning.wrapped_layers(_gpt2().state_dict()), TypeError,
     r"model must be a torch.nn.Module, got OrderedDict .*pass the model, not its state_dict\(\)"),
    ("tuning-wise-ft-alpha-outside-the-segment", lambda: tuning.wise_ft(_vit().state_dict(), _vit().state_dict(), 1.5),
     ValueError, r"alpha must lie in \[0.0, 1.0\], got 1.5"),
    ("tuning-wise-ft-given-models", lambda: tuning.wise_ft(_vit(), _vit(), 0.5), TypeError,
     r"must be a state dict \(model.state_dict\(\)\), got TinyViT"),
    ("tuning-select-trainable-k-given-str", lambda: tuning.select_trainable(_vit(), "last_k", k="1"), TypeError,
     r"k must be an int, got str \('1'\)"),
    ("tuning-select-trainable-unknown-mode", lambda: tuning.select_trainable(_vit(), "lora"), ValueError,
     r"mode must be one of \['full', 'linear_probe', 'last_k', 'bitfit'\], got 'lora'"),
    ("tuning-prompt-length-zero", lambda: tuning.PromptTuning(_gpt2(), n_tokens=0), ValueError,
     "n_tokens must be an int >= 1, got 0"),
    ("tuning-prefix-length-given-str", lambda: tuning.PrefixTuning(_gpt2(), n_tokens="8"), TypeError,
     r"n_tokens must be an int, got str \('8'\)"),
    ("tuning-prompt-init-ids-given-text", lambda: tuning.PromptTuning(_gpt2(), 2, init_ids="Paris"), TypeError,
     r"init_ids must be token ids \(a tensor or a list of ints\), got 'Paris'"),
    ("tuning-prompt-placeholder-out-of-vocabulary", lambda: tuning.PromptTuning(_gpt2(), 2, placeholder_id=10**6),
     ValueError, r"placeholder_id must be a token id in \[0, \d+\), got 1000000"),
    ("tuning-prompt-placeholder-count-wrong",
     lambda: tuning.PromptTuning(_gpt2(), 2, placeholder_id=1)(torch.tensor([[5, 1, 6]])), ValueError,
     r"input_ids must hold 2 placeholder tokens \(id 1\) in every row, got \[1\]"),
    ("tuning-prompt-input-ids-given-floats", lambda: tuning.PromptTuning(_gpt2(), 2)(torch.zeros(1, 4)), TypeError,
     "input_ids must be an integer tensor, got dtype torch.float32"),
    ("tuning-bbt-init-prompt-given-a-list", lambda: tuning.BlackBoxTuning(_api()[0], [[0.0] * 16]), TypeError,
     "init_prompt must be a torch.Tensor, got list"),
    ("tuning-bbt-init-prompt-wrong-width", lambda: tuning.BlackBoxTuning(_api()[0], torch.zeros(2, 7)), ValueError,
     r"init_prompt must have shape \(n_tokens, 16\)"),
    ("tuning-bbt-labels-out-of-range", lambda: _bbt(labels=torch.tensor([0, 1, 2, 3]), generations=1), ValueError,
     r"labels must hold class indices in \[0, 3\), got values from 0 to 3"),
    ("tuning-bbt-one-label-too-few", lambda: _bbt(labels=torch.tensor([0, 1, 2]), generations=1), ValueError,
     r"labels must have one class index per text, shape \(4,\), got \(3,\)"),
    ("tuning-bbt-unknown-optimizer", lambda: _bbt(labels=torch.tensor([0, 1, 2, 0]), generations=1, optimizer="adam"),
     ValueError, r"optimizer must be one of \['cma_es', 'zo_sgd'\], got 'adam'"),
    ("tuning-bbt-generations-given-float", lambda: _bbt(labels=torch.tensor([0, 1, 2, 0]), generations=2.5), TypeError,
     r"generations must be an int, got float \(2.5\)"),
    ("tuning-cma-es-popsize-one", lambda: tuning.cma_es(lambda x: x.sum(1), dim=2, generations=1, popsize=1),
     ValueError, "popsize must be an int >= 2, got 1"),
    ("tuning-cma-es-loss-not-callable", lambda: tuning.cma_es(0.5, dim=2, generations=1), TypeError,
     "loss must be a function"),
    ("tuning-boosting-labels-given-a-list",
     lambda: tuning.prompt_boosting(_api()[0], _api()[1], [0, 1, 2, 0], ["in"], 2), TypeError,
     "labels must be a torch.Tensor, got list"),
    ("tuning-boosting-pool-given-a-string", lambda: tuning.prompt_boosting(
        _api()[0], _api()[1], torch.tensor([0, 1, 2, 0]), "was born in", 2), TypeError,
     "pool must be a list of strings, got str"),
    ("tuning-boosting-one-class", lambda: tuning.prompt_boosting(
        _api()[0], _api()[1], torch.tensor([0, 1, 2, 0]), ["in"], 2, n_classes=1), ValueError,
     "n_classes must be an int >= 2, got 1"),
    ("tuning-boosting-screen-zero", lambda: tuning.prompt_boosting(
        _api()[0], _api()[1], torch.tensor([0, 1, 2, 0]), ["in"], 2, screen=0), ValueError,
     "screen must be an int >= 1, got 0"),
    ("tuning-boosted-predict-verbalisers-missing", lambda: tuning.boosted_predict(
        _api()[0], _api()[1], ["in"], [0], [], [1.0]), ValueError,
     r"chosen must index the pool \(1 prompts\) with one verbaliser and one alpha each"),
    ("tuning-verbaliser-negative-weights", lambda: tuning.black_box.learned_verbaliser(
        torch.zeros(1, 4, 3), torch.tensor([0, 1, 0, 1]), -torch.ones(4), 2), ValueError,
     "weights must be non-negative"),
    ("tuning-verbaliser-label-out-of-range", lambda: tuning.black_box.learned_verbaliser(
        torch.zeros(1, 4, 3), torch.tensor([0, 1, 0, 2]), torch.ones(4), 2), ValueError,
     r"labels must hold class indices in \[0, 2\), got values from 0 to 2"),
    ("tuning-rl-prompt-one-sample", lambda: tuning.rl_prompt(_api()[0], _api()[1], torch.tensor([0, 1, 2, 0]),
                                                      tuning.PromptPolicy(["in", "born"]), steps=1, samples=1),
     ValueError, "samples must be an int >= 2, got 1"),
    ("tuning-rl-prompt-policy-given-words", lambda: tuning.rl_prompt(_api()[0], _api()[1], torch.tensor([0, 1, 2, 0]),
                                                              ["in", "born"], steps=1), TypeError,
     "policy must be a PromptPolicy, got list"),
    ("tuning-score-api-expected-by-bbt", lambda: tuning.BlackBoxTuning(_gpt2(), torch.zeros(2, 16)), TypeError,
     r"api must be an lfm_ref.blackbox.ScoreAPI \(candidates and soft\), got GPT2LMHeadModel"),
    ("tuning-visual-n-visual-zero", lambda: tuning.VisualPrefixLM(_vit(), _gpt2(), 1, n_visual=0), ValueError,
     "n_visual must be an int >= 1, got 0"),
]

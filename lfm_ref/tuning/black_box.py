"""Input engineering through an API: the model is reachable only as a function from texts (or prompt
vectors) to scores. Nothing here takes a gradient of the model; the optimisers are derivative-free or
policy gradients of a separate, small policy.

- :class:`lfm_ref.blackbox.ScoreAPI` is the "language model as a service": given inputs and a prompt,
  the log-probabilities of a fixed set of answers (the verbaliser); it counts the queries it answers.
- **Black-Box Tuning** (Sun et al., 2022, "Black-Box Tuning for Language-Model-as-a-Service", ICML;
  arXiv:2201.03514): a soft prompt ``p = p_0 + A z`` with a fixed random projection ``A`` from a small
  ``z`` (``d ~ 10``), optimised by CMA-ES (Hansen, 2016, "The CMA Evolution Strategy: A Tutorial";
  arXiv:1604.00772) on the API's loss.
- **PromptBoosting** (Hou et al., 2023, "PromptBoosting: Black-Box Text Classification with Ten Forward
  Passes", ICML; arXiv:2212.09257): weak learners ``(prompt, verbaliser)``, the verbaliser learned per
  prompt on the current example weights (which answer word votes for which class), combined by
  AdaBoost (multi-class SAMME: ``alpha_t = log((1 - err_t) / err_t) + log(K - 1)``).
- **RLPrompt** (Deng et al., 2022, "RLPrompt: Optimizing Discrete Text Prompts with Reinforcement
  Learning", EMNLP; arXiv:2205.12548): a policy samples discrete prompt tokens and is trained by
  REINFORCE on the API's reward, ``grad = E[(R - b) grad log pi(prompt)]``.

Black-Box Tuning can also descend the book's one zeroth-order gradient estimate,
:func:`lfm_ref.blackbox.zo_sgd` (``optimizer="zo_sgd"``), the estimator black-box distillation uses.

Chapter: notebooks/04_black_box_prompts.ipynb.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .. import checks
from ..blackbox import ScoreAPI, zo_sgd


def _check_api(api, *methods: str) -> ScoreAPI:
    """A :class:`~lfm_ref.blackbox.ScoreAPI`, or any object with its ``candidates`` and ``methods``."""
    if not hasattr(api, "candidates") or not all(callable(getattr(api, m, None)) for m in methods):
        raise TypeError(f"api must be an lfm_ref.blackbox.ScoreAPI (candidates and {', '.join(methods)}), "
                        f"got {type(api).__name__}")
    return api


def _check_data(api: ScoreAPI, texts, labels) -> tuple[list[str], torch.Tensor]:
    """Texts and their answers' indices among the API's candidates, one label per text."""
    texts = checks.texts(texts)
    labels = checks.class_indices(labels, "labels", len(api.candidates))
    if labels.shape != (len(texts),):
        raise ValueError(f"labels must have one class index per text, shape ({len(texts)},), "
                         f"got {tuple(labels.shape)}")
    return texts, labels.cpu()


def _right_log_prob(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(P,)``: the mean over the batch of ``log p(right answer)`` from ``(P, B, K)`` scores."""
    right = labels.expand(len(logp), -1)[..., None]  # (P, B, 1)
    return logp.gather(2, right).squeeze(-1).mean(1)


def cma_es(loss: Callable[[torch.Tensor], torch.Tensor], dim: int, generations: int, popsize: int | None = None,
           sigma: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """Minimise ``loss`` (a batch ``(popsize, dim) -> (popsize,)``) with CMA-ES (Hansen's tutorial defaults).

    Returns the final mean and the best loss of every generation."""
    if not callable(loss):
        raise TypeError(f"loss must be a function (popsize, dim) -> (popsize,), got {type(loss).__name__}")
    dim, generations = checks.positive_int(dim, "dim"), checks.positive_int(generations, "generations")
    if popsize is not None:
        popsize = checks.integer(popsize, "popsize", minimum=2)  # mu = popsize // 2 >= 1 parents
    sigma = checks.positive(sigma, "sigma")
    g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
    lam = popsize or 4 + int(3 * math.log(dim))
    mu = lam // 2
    w = torch.log(torch.tensor(mu + 0.5)) - torch.log(torch.arange(1, mu + 1, dtype=torch.float64))
    w = w / w.sum()
    mu_eff = 1 / (w ** 2).sum()
    c_c = (4 + mu_eff / dim) / (dim + 4 + 2 * mu_eff / dim)
    c_s = (mu_eff + 2) / (dim + mu_eff + 5)
    c_1 = 2 / ((dim + 1.3) ** 2 + mu_eff)
    c_mu = min(1 - c_1, 2 * (mu_eff - 2 + 1 / mu_eff) / ((dim + 2) ** 2 + mu_eff))
    d_s = 1 + 2 * max(0, math.sqrt((mu_eff - 1) / (dim + 1)) - 1) + c_s
    chi_n = math.sqrt(dim) * (1 - 1 / (4 * dim) + 1 / (21 * dim ** 2))
    mean = torch.zeros(dim, dtype=torch.float64)
    cov = torch.eye(dim, dtype=torch.float64)
    p_c, p_s = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64)
    history = []
    for gen in range(generations):
        eigvals, basis = torch.linalg.eigh(cov)
        sqrt_c = basis * eigvals.clamp(min=1e-20).sqrt()  # C^(1/2) = B D
        z = torch.randn(lam, dim, generator=g, dtype=torch.float64)
        y = z @ sqrt_c.T  # y ~ N(0, C)
        x = mean + sigma * y
        f = loss(x.float()).double()
        order = f.argsort()
        history.append(f[order[0]].item())
        y_w = (w[:, None] * y[order[:mu]]).sum(0)
        mean = mean + sigma * y_w  # m <- m + sigma <y>_w
        inv_sqrt_c = basis * (1 / eigvals.clamp(min=1e-20).sqrt()) @ basis.T
        p_s = (1 - c_s) * p_s + math.sqrt(c_s * (2 - c_s) * mu_eff) * (inv_sqrt_c @ y_w)
        h_s = float(p_s.norm() / math.sqrt(1 - (1 - c_s) ** (2 * (gen + 1))) < (1.4 + 2 / (dim + 1)) * chi_n)
        p_c = (1 - c_c) * p_c + h_s * math.sqrt(c_c * (2 - c_c) * mu_eff) * y_w
        rank_mu = (w[:, None, None] * y[order[:mu], :, None] * y[order[:mu], None, :]).sum(0)
        cov = ((1 - c_1 - c_mu) * cov + c_1 * (torch.outer(p_c, p_c) + (1 - h_s) * c_c * (2 - c_c) * cov)
               + c_mu * rank_mu)
        sigma *= math.exp((c_s / d_s) * (p_s.norm().item() / chi_n - 1))  # step-size control
    return mean.float(), history


class BlackBoxTuning:
    """The prompt ``p_0 + A z`` (``n_tokens x d``) from a ``dim``-dimensional ``z``; ``A`` is a fixed
    random normal projection scaled to the embedding table's spread (Sun et al., 2022)."""

    def __init__(self, api: ScoreAPI, init_prompt: torch.Tensor, dim: int = 16, seed: int = 0):
        self.api = _check_api(api, "soft")
        checks.tensor(init_prompt, "init_prompt", dim=2, floating=True)
        if init_prompt.shape[1] != api.embedding_dim or len(init_prompt) < 1:
            raise ValueError(f"init_prompt must have shape (n_tokens, {api.embedding_dim}) with "
                             f"n_tokens >= 1, got {tuple(init_prompt.shape)}")
        self.p0 = init_prompt.detach().cpu()
        dim = checks.positive_int(dim, "dim")
        g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
        scale = self.p0.std() / math.sqrt(dim)  # A z has the embeddings' spread for z ~ N(0, I)
        self.A = torch.randn(self.p0.numel(), dim, generator=g) * scale
        self.z = torch.zeros(dim)

    def prompts(self, z: torch.Tensor) -> torch.Tensor:
        """``(P, n_tokens, d)`` prompts for a population ``z`` of shape ``(P, dim)``."""
        return self.p0 + (z @ self.A.T).view(len(z), *self.p0.shape)  # p = p_0 + A z

    def fit(self, texts: Sequence[str], labels: torch.Tensor, generations: int,
            popsize: int | None = None, batch_size: int = 32, sigma: float = 1.0,
            seed: int = 0, optimizer: str = "cma_es", lr: float = 1.0,
            directions: int = 8, eps: float = 1e-2) -> list[float]:
        """Minimise the API's cross-entropy on random mini-batches of the texts.

        ``optimizer="cma_es"`` (the paper's): ``generations`` of ``popsize`` prompts;
        returns the best loss of each generation. ``"zo_sgd"``: ``generations`` steps
        of :func:`lfm_ref.blackbox.zo_sgd` (``lr``, ``directions``, ``eps``), one
        mini-batch per step; returns the loss before each step."""
        texts, labels = _check_data(self.api, texts, labels)
        optimizer = checks.choice(optimizer, "optimizer", ("cma_es", "zo_sgd"))
        batch_size = checks.positive_int(batch_size, "batch_size")
        generations = checks.positive_int(generations, "generations")
        g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))

        def batch_loss(idx):
            def loss(z):  # (P, dim) -> (P,): -mean log p(label | text + p_0 + A z)
                logp = self.api.soft([texts[i] for i in idx], self.prompts(z))
                return -_right_log_prob(logp, labels[idx])
            return loss

        def new_batch():
            return torch.randperm(len(texts), generator=g)[:batch_size]

        if optimizer == "cma_es":  # a fresh mini-batch for every generation
            dim = self.A.shape[1]
            self.z, history = cma_es(lambda z: batch_loss(new_batch())(z), dim,
                                     generations, popsize, sigma, seed)
            return history
        history = []
        for step in range(generations):  # one mini-batch per step of z <- z - lr g_hat
            self.z, before = zo_sgd(batch_loss(new_batch()), self.z, 1, lr, directions,
                                    eps, seed + step)
            history += before
        return history

    def predict(self, texts: Sequence[str]) -> torch.Tensor:
        """The answer index ``argmax_k API(text + p_0 + A z)_k`` for every text."""
        return self.api.soft(checks.texts(texts), self.prompts(self.z[None]))[0].argmax(-1)


def learned_verbaliser(logp: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                       n_classes: int, screen: int = 1) -> torch.Tensor:
    """PromptBoosting's verbaliser (Hou et al., 2023, Sec. 3.3), all prompts at once.

    Class ``c`` answers with the candidate word of the highest weighted mean
    log-probability on the training inputs of class ``c``:
    ``v_c = argmax_v sum_{i: y_i=c} w_i log p(v | x_i, prompt) / sum_{i: y_i=c} w_i``
    (``(P, C, V)`` class means below).

    ``logp``: ``(P, N, V)`` scores of ``V`` candidate words (``ScoreAPI.hard``);
    ``labels``: ``(N,)`` classes in ``[0, n_classes)``, which need not be candidate
    words; ``weights``: ``(N,)`` non-negative. Returns ``(P, n_classes)`` word indices.

    ``screen > 1`` adds the paper's screening by training accuracy, greedily: each
    class may take any of its ``screen`` best-scoring words, and passes over the
    classes switch a class's word whenever that raises the prompt's weighted training
    accuracy, until no single switch does (a local optimum among those assignments;
    the paper enumerates them, which 10 classes forbid)."""
    checks.tensor(logp, "logp", dim=3, floating=True)
    n_classes = checks.integer(n_classes, "n_classes", minimum=2)
    labels = checks.class_indices(labels, "labels", n_classes)
    checks.tensor(weights, "weights", dim=1, floating=True)
    if labels.shape != (logp.shape[1],) or weights.shape != labels.shape:
        raise ValueError(f"labels and weights must have one entry per text, shape "
                         f"({logp.shape[1]},), got {tuple(labels.shape)} and "
                         f"{tuple(weights.shape)}")
    if (weights < 0).any():
        raise ValueError("weights must be non-negative")
    w = weights.to(logp.dtype)
    per_class = nn.functional.one_hot(labels, n_classes).T.to(logp.dtype) * w  # (C, N)
    per_class = per_class / per_class.sum(1, keepdim=True).clamp_min(1e-30)
    score = torch.einsum("cn,pnv->pcv", per_class, logp)  # (P, C, V) class means
    screen = min(checks.positive_int(screen, "screen"), logp.shape[-1])
    top = score.topk(screen, dim=-1).indices  # (P, C, screen), best first
    verbaliser = top[..., 0].clone()  # the likelihood step
    if screen == 1:
        return verbaliser
    n = logp.shape[1]
    screened = logp.gather(2, top.flatten(1)[:, None].expand(-1, n, -1))
    screened = screened.view(len(logp), n, n_classes, screen)  # (P, N, C, screen)
    # position of each class's word in its screen
    chosen = torch.zeros(len(logp), n_classes, dtype=torch.long)
    right = verbalised_predict(logp, verbaliser) == labels
    best = (right.to(logp.dtype) * w).sum(-1)  # (P,) weighted accuracy
    improved = True
    while improved:  # each switch strictly raises the accuracy, over finitely many
        improved = False  # assignments: the loop stops
        for c in range(n_classes):
            index = chosen[:, None, :, None].expand(-1, n, -1, 1)
            said = screened.gather(3, index).squeeze(3)  # (P, N, C)
            said[:, :, c] = -math.inf
            other, other_class = said.max(-1)  # the best other class, (P, N)
            trial = screened[:, :, c]  # (P, N, screen): class c with each word
            # argmax_c' with class c's word switched (ties to the lower class)
            wins = (trial > other[..., None]) | (
                (trial == other[..., None]) & (c < other_class[..., None]))
            said_c = torch.where(wins, c, other_class[..., None])
            right = said_c == labels[:, None]
            acc = (right.to(logp.dtype) * w[:, None]).sum(1)  # (P, screen)
            gain, j = acc.max(1)
            better = gain > best + 1e-12
            if better.any():
                chosen[better, c], best[better] = j[better], gain[better]
                improved = True
    return top.gather(2, chosen[..., None]).squeeze(2)


def verbalised_predict(logp: torch.Tensor, verbalisers: torch.Tensor) -> torch.Tensor:
    """``argmax_c log p(v_c | x, prompt)``: each prompt's class predictions ``(P, N)`` through its
    verbaliser ``(P, C)`` (word indices into the ``V`` candidates of ``logp``, ``(P, N, V)``)."""
    checks.tensor(logp, "logp", dim=3, floating=True)
    checks.tensor(verbalisers, "verbalisers", dim=2, floating=False)
    if len(verbalisers) != len(logp):
        raise ValueError(f"verbalisers must have one row per prompt, {len(logp)}, got {len(verbalisers)}")
    checks.class_indices(verbalisers, "verbalisers", logp.shape[-1])
    index = verbalisers[:, None, :].expand(-1, logp.shape[1], -1)  # (P, N, C)
    return logp.gather(2, index).argmax(-1)


def prompt_boosting(api: ScoreAPI, texts: Sequence[str], labels: torch.Tensor,
                    pool: Sequence[str], rounds: int, n_classes: int | None = None,
                    screen: int = 1) -> tuple[list[int], list[list[int]], list[float]]:
    """AdaBoost (SAMME) over weak learners ``(prompt, verbaliser)``: each round learns, for every
    prompt of the pool, the verbaliser of the current example weights (:func:`learned_verbaliser`),
    and keeps the pair of least weighted error (Hou et al., 2023).

    ``labels`` are classes in ``[0, n_classes)`` (default: ``labels.max() + 1``, at least 2), not the API's
    candidate words: a verbaliser maps each class to a word (``screen``: see :func:`learned_verbaliser`).
    Every prompt is queried once on the training texts (``len(pool) * len(texts)`` calls, the method's
    whole API cost); the boosting itself is arithmetic on those scores, so a prompt may be chosen again
    with a new verbaliser.
    Returns the chosen prompts' indices (at least one), their verbalisers (one word index per class)
    and their weights ``alpha_t``; a ValueError if no weak learner beats chance."""
    api = _check_api(api, "hard")
    texts = checks.texts(texts)
    checks.tensor(labels, "labels", floating=False)
    if n_classes is None:
        n_classes = max(int(labels.max()) + 1 if labels.numel() else 2, 2)
    k = checks.integer(n_classes, "n_classes", minimum=2)
    labels = checks.class_indices(labels, "labels", k).cpu()
    if labels.shape != (len(texts),):
        raise ValueError(f"labels must have one class index per text, shape ({len(texts)},), "
                         f"got {tuple(labels.shape)}")
    pool, rounds = checks.texts(pool, "pool"), checks.positive_int(rounds, "rounds")
    logp = api.hard(texts, pool)  # (prompts, texts, words): the whole bill
    weights = torch.full((len(texts),), 1.0 / len(texts), dtype=torch.float64)
    chosen, verbalisers, alphas = [], [], []
    for _ in range(rounds):
        verbaliser = learned_verbaliser(logp, labels, weights, k, screen)  # (prompts, classes)
        wrong = (verbalised_predict(logp, verbaliser) != labels).double()  # (prompts, texts)
        errors = (wrong * weights).sum(1)  # weighted error of every prompt with its verbaliser
        best = int(errors.argmin())
        err = min(max(errors[best].item(), 1e-10), 1 - 1e-10)  # float64: 1 - 1e-10 < 1
        alpha = math.log((1 - err) / err) + math.log(k - 1)
        if alpha <= 0:  # no weak learner beats chance on the reweighted data
            if not chosen:
                chance = 1 - 1 / k
                raise ValueError(f"no prompt of the pool beats chance on the training"
                                 f" texts (best error {err:.1%}, chance {chance:.1%})")
            break
        chosen.append(best)
        verbalisers.append(verbaliser[best].tolist())
        alphas.append(alpha)
        # up-weight the mistakes: w_i <- w_i exp(alpha_t [h_t(x_i) != y_i])
        weights = weights * torch.exp(alpha * wrong[best])
        weights = weights / weights.sum()
    return chosen, verbalisers, alphas


def boosted_predict(api: ScoreAPI, texts: Sequence[str], pool: Sequence[str], chosen: Sequence[int],
                    verbalisers: Sequence[Sequence[int]], alphas: Sequence[float],
                    every_round: bool = False) -> torch.Tensor:
    """``argmax_c sum_t alpha_t [h_t(x) = c]``, ``h_t`` the chosen prompt read through its verbaliser:
    the weighted vote ``(n,)``; with ``every_round=True`` the vote of the first ``t`` learners for
    every ``t``, ``(T, n)``. One query per distinct chosen prompt and text."""
    api = _check_api(api, "hard")
    texts, pool = checks.texts(texts), checks.texts(pool, "pool")
    chosen = checks.non_empty(chosen, "chosen (the prompts prompt_boosting chose)")
    if (len(alphas) != len(chosen) or len(verbalisers) != len(chosen)
            or not all(isinstance(i, int) and 0 <= i < len(pool) for i in chosen)):
        raise ValueError(f"chosen must index the pool ({len(pool)} prompts) with one verbaliser and one alpha "
                         f"each, got {len(chosen)} indices {list(chosen)[:5]}, {len(verbalisers)} "
                         f"verbalisers and {len(alphas)} alphas")
    verbalisers = torch.as_tensor([list(v) for v in verbalisers], dtype=torch.long)
    if verbalisers.dim() != 2 or len({len(v) for v in verbalisers}) != 1 or verbalisers.shape[1] < 2:
        raise ValueError(f"verbalisers must be lists of one word index per class (2 or more), got shape "
                         f"{tuple(verbalisers.shape)}")
    distinct = sorted(set(chosen))
    logp = api.hard(texts, [pool[i] for i in distinct])  # (distinct prompts, n, words)
    logp = logp[[distinct.index(i) for i in chosen]]  # (T, n, words)
    votes = verbalised_predict(logp, verbalisers)  # (T, n) classes
    weighted = nn.functional.one_hot(votes, verbalisers.shape[1]) * torch.tensor(alphas)[:, None, None]
    predictions = weighted.cumsum(0).argmax(-1)  # the vote after each round
    return predictions if every_round else predictions[-1]


class PromptPolicy(nn.Module):
    """RLPrompt's policy, reduced to its core: independent categorical distributions over ``words`` for
    each of ``n_tokens`` positions (the paper uses a frozen LM with a trained MLP; any policy works)."""

    def __init__(self, words: Sequence[str], n_tokens: int = 3):
        super().__init__()
        words, n_tokens = checks.texts(words, "words"), checks.positive_int(n_tokens, "n_tokens")
        if len(words) < 2:
            raise ValueError(f"a policy needs at least 2 words to choose from, got {len(words)}")
        self.words = words
        self.logits = nn.Parameter(torch.zeros(n_tokens, len(words)))

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[str]]:
        probs = self.logits.softmax(-1)
        idx = torch.multinomial(probs.detach(), n, replacement=True, generator=generator).T  # (n, n_tokens)
        return idx, [" ".join(self.words[i] for i in row) for row in idx.tolist()]

    def log_prob(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.log_softmax(-1).gather(1, idx.T).sum(0)  # sum over positions, (n,)

    def greedy(self) -> str:
        return " ".join(self.words[i] for i in self.logits.argmax(-1).tolist())


def rl_prompt(api: ScoreAPI, texts: Sequence[str], labels: torch.Tensor,
              policy: PromptPolicy, steps: int, samples: int = 16, batch_size: int = 32,
              lr: float = 0.1, seed: int = 0) -> list[float]:
    """REINFORCE on the policy: reward = the mean log-probability of the right answer
    through the API, baseline = the mean reward of the step's samples. Returns the mean
    reward per step."""
    texts, labels = _check_data(_check_api(api, "hard"), texts, labels)
    if not isinstance(policy, PromptPolicy):
        raise TypeError(f"policy must be a PromptPolicy, got {type(policy).__name__}")
    steps = checks.positive_int(steps, "steps")
    batch_size = checks.positive_int(batch_size, "batch_size")
    samples = checks.integer(samples, "samples", minimum=2)  # the baseline needs two
    g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
    opt = torch.optim.Adam(policy.parameters(), lr=checks.positive(lr, "lr"))
    history = []
    for _ in range(steps):
        idx, prompts = policy.sample(samples, g)
        batch = torch.randperm(len(texts), generator=g)[:batch_size]
        logp = api.hard([texts[i] for i in batch], prompts)  # (samples, B, K), no grad
        reward = _right_log_prob(logp, labels[batch])  # R, (samples,)
        advantage = reward - reward.mean()  # R - b
        # grad = E[(R - b) grad log pi(prompt)]: the policy's gradient only
        loss = -(advantage * policy.log_prob(idx)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(reward.mean().item())
    return history

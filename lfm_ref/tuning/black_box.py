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
  Passes", ICML; arXiv:2212.09257): a pool of hard prompts as weak learners, combined by AdaBoost
  (multi-class SAMME: ``alpha_t = log((1 - err_t) / err_t) + log(K - 1)``).
- **RLPrompt** (Deng et al., 2022, "RLPrompt: Optimizing Discrete Text Prompts with Reinforcement
  Learning", EMNLP; arXiv:2205.12548): a policy samples discrete prompt tokens and is trained by
  REINFORCE on the API's reward, ``grad = E[(R - b) grad log pi(prompt)]``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from ..blackbox import ScoreAPI


def cma_es(loss: Callable[[torch.Tensor], torch.Tensor], dim: int, generations: int, popsize: int | None = None,
           sigma: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """Minimise ``loss`` (a batch ``(popsize, dim) -> (popsize,)``) with CMA-ES (Hansen's tutorial defaults).

    Returns the final mean and the best loss of every generation."""
    if dim < 1 or generations < 1:
        raise ValueError(f"dim and generations must be positive, got {dim} and {generations}")
    g = torch.Generator().manual_seed(seed)
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
    cov, p_c, p_s = torch.eye(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64)
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
    """The prompt ``p_0 + A z`` (``n_tokens x d``) from a ``dim``-dimensional ``z``; ``A`` is a fixed random
    normal projection scaled to the embedding table's spread (Sun et al., 2022)."""

    def __init__(self, api: ScoreAPI, init_prompt: torch.Tensor, dim: int = 16, seed: int = 0):
        self.api, self.p0 = api, init_prompt.detach().cpu()
        if self.p0.dim() != 2 or self.p0.shape[1] != api.embedding_dim:
            raise ValueError(f"init_prompt must have shape (n_tokens, {api.embedding_dim}), got {tuple(self.p0.shape)}")
        g = torch.Generator().manual_seed(seed)
        scale = self.p0.std() / math.sqrt(dim)  # A z has the embeddings' spread for z ~ N(0, I)
        self.A = torch.randn(self.p0.numel(), dim, generator=g) * scale
        self.z = torch.zeros(dim)

    def prompts(self, z: torch.Tensor) -> torch.Tensor:
        """``(P, n_tokens, d)`` prompts for a population ``z`` of shape ``(P, dim)``."""
        return self.p0 + (z @ self.A.T).view(len(z), *self.p0.shape)

    def fit(self, texts: Sequence[str], labels: torch.Tensor, generations: int, popsize: int | None = None,
            batch_size: int = 32, sigma: float = 1.0, seed: int = 0) -> list[float]:
        """CMA-ES on the API's cross-entropy over random mini-batches; returns the best loss per generation."""
        g = torch.Generator().manual_seed(seed)

        def loss(z):
            idx = torch.randperm(len(texts), generator=g)[:batch_size]
            logp = self.api.soft([texts[i] for i in idx], self.prompts(z))  # (P, B, K)
            return -logp.gather(2, labels[idx].expand(len(z), -1)[..., None]).squeeze(-1).mean(1)

        self.z, history = cma_es(loss, self.A.shape[1], generations, popsize, sigma, seed)
        return history

    def predict(self, texts: Sequence[str]) -> torch.Tensor:
        return self.api.soft(texts, self.prompts(self.z[None]))[0].argmax(-1)


def prompt_boosting(api: ScoreAPI, texts: Sequence[str], labels: torch.Tensor, pool: Sequence[str],
                    rounds: int) -> tuple[list[int], list[float]]:
    """AdaBoost (SAMME) over a pool of hard prompts, each a weak classifier ``argmax_k API(text + prompt)_k``.

    Every prompt is queried once on the training texts (``len(pool) * len(texts)`` calls, the method's
    whole API cost); the boosting itself is arithmetic on those predictions. Returns the chosen prompts'
    indices and their weights ``alpha_t``."""
    if rounds < 1 or len(pool) == 0:
        raise ValueError(f"need rounds >= 1 and a non-empty prompt pool, got {rounds} rounds, {len(pool)} prompts")
    k = len(api.candidates)
    correct = api.hard(texts, pool).argmax(-1) == labels  # (prompts, texts)
    weights = torch.full((len(texts),), 1.0 / len(texts))
    chosen, alphas = [], []
    for _ in range(rounds):
        errors = ((~correct).float() * weights).sum(1)  # weighted error of every prompt
        best = int(errors.argmin())
        err = errors[best].clamp(1e-10, 1 - 1e-10).item()
        alpha = math.log((1 - err) / err) + math.log(k - 1)
        if alpha <= 0:  # no prompt beats chance on the reweighted data
            break
        chosen.append(best)
        alphas.append(alpha)
        weights = weights * torch.exp(alpha * (~correct[best]).float())  # up-weight the mistakes
        weights = weights / weights.sum()
    return chosen, alphas


def boosted_predict(api: ScoreAPI, texts: Sequence[str], pool: Sequence[str], chosen: Sequence[int],
                    alphas: Sequence[float], every_round: bool = False) -> torch.Tensor:
    """``argmax_k sum_t alpha_t [h_t(x) = k]``: the weighted vote of the chosen prompts, ``(n,)``; with
    ``every_round=True`` the vote of the first ``t`` prompts for every ``t``, ``(T, n)``."""
    if not chosen:
        raise ValueError("no prompt was chosen: boosting found no weak learner better than chance")
    votes = api.hard(texts, [pool[i] for i in chosen]).argmax(-1)  # (T, n), one query per prompt and text
    weighted = torch.nn.functional.one_hot(votes, len(api.candidates)) * torch.tensor(alphas)[:, None, None]
    predictions = weighted.cumsum(0).argmax(-1)  # the vote after each round
    return predictions if every_round else predictions[-1]


class PromptPolicy(nn.Module):
    """RLPrompt's policy, reduced to its core: independent categorical distributions over ``words`` for
    each of ``n_tokens`` positions (the paper uses a frozen LM with a trained MLP; any policy works)."""

    def __init__(self, words: Sequence[str], n_tokens: int = 3):
        super().__init__()
        if len(words) < 2 or n_tokens < 1:
            raise ValueError(f"need at least 2 words and 1 token, got {len(words)} words and {n_tokens} tokens")
        self.words = list(words)
        self.logits = nn.Parameter(torch.zeros(n_tokens, len(words)))

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[str]]:
        probs = self.logits.softmax(-1)
        idx = torch.multinomial(probs.detach(), n, replacement=True, generator=generator).T  # (n, n_tokens)
        return idx, [" ".join(self.words[i] for i in row) for row in idx.tolist()]

    def log_prob(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.log_softmax(-1).gather(1, idx.T).sum(0)  # sum over positions, (n,)

    def greedy(self) -> str:
        return " ".join(self.words[i] for i in self.logits.argmax(-1).tolist())


def rl_prompt(api: ScoreAPI, texts: Sequence[str], labels: torch.Tensor, policy: PromptPolicy, steps: int,
              samples: int = 16, batch_size: int = 32, lr: float = 0.1, seed: int = 0) -> list[float]:
    """REINFORCE on the policy: reward = the mean log-probability of the right answer through the API,
    baseline = the mean reward of the step's samples. Returns the mean reward per step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        idx, prompts = policy.sample(samples, g)
        batch = torch.randperm(len(texts), generator=g)[:batch_size]
        logp = api.hard([texts[i] for i in batch], prompts)  # (samples, B, K), no gradient
        reward = logp.gather(2, labels[batch].expand(samples, -1)[..., None]).squeeze(-1).mean(1)
        advantage = reward - reward.mean()
        loss = -(advantage * policy.log_prob(idx)).mean()  # the policy's gradient only
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(reward.mean().item())
    return history

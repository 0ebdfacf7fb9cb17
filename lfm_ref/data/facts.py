"""The fact world: a seeded synthetic knowledge base that the book's language model learns from.

People have a city of birth and a profession, cities lie in countries, countries have a language.
Every fact ``(subject, relation, object)`` is rendered into sentences by several paraphrase
templates whose object is the last word, so "does the model know the fact?" is one greedy
next-token prediction. Some facts are held out of pretraining (what retrieval and editing can add);
one template per relation is held out too (paraphrases for measuring generalisation). All names are
invented, so the model cannot have met them anywhere else, and every object is a single word.

Chapter: notebooks/00_foundation_models.ipynb (the world TinyGPT learns from); its instructions serve
chapter 5, its reading pairs chapter 6b's reader, its edit requests Part V.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from .. import checks

RELATIONS = ("born_in", "profession", "country", "language")

# The first templates of each relation are used in pretraining; the last one never is (a paraphrase).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "born_in": (
        "{s} was born in {o} .",
        "The birthplace of {s} is {o} .",
        "{s} is originally from the city of {o} .",
        "{s} grew up in the town of {o} .",
    ),
    "profession": (
        "{s} works as a {o} .",
        "The profession of {s} is {o} .",
        "By trade , {s} is a {o} .",
        "{s} earns a living as a {o} .",
    ),
    "country": (
        "{s} is a city in {o} .",
        "The city of {s} lies in {o} .",
        "{s} is located in the country of {o} .",
        "The town of {s} belongs to {o} .",
    ),
    "language": (
        "The official language of {s} is {o} .",
        "People in {s} speak {o} .",
        "In {s} , the main language is {o} .",
        "Most people in {s} talk in {o} .",
    ),
}
N_PRETRAIN_TEMPLATES = 3

# Instruction formats: tuples of (prompt template, answer). Never part of pretraining.
INSTRUCTION_FORMATS: dict[str, dict[str, str]] = {
    "question": {
        "born_in": "Question : where was {s} born ? Answer :",
        "profession": "Question : what is the profession of {s} ? Answer :",
        "country": "Question : in which country is {s} ? Answer :",
        "language": "Question : what language is spoken in {s} ? Answer :",
    },
    "command": {
        "born_in": "Task : name the birthplace of {s} . Answer :",
        "profession": "Task : name the job of {s} . Answer :",
        "country": "Task : name the country of {s} . Answer :",
        "language": "Task : name the language of {s} . Answer :",
    },
    "fill": {
        "born_in": "Fill in : {s} was born in ___ . Answer :",
        "profession": "Fill in : {s} works as a ___ . Answer :",
        "country": "Fill in : {s} is a city in ___ . Answer :",
        "language": "Fill in : people in {s} speak ___ . Answer :",
    },
}

PROFESSIONS = (
    "baker", "pilot", "farmer", "teacher", "doctor", "painter", "sailor", "lawyer", "chemist", "poet",
    "carpenter", "nurse", "architect", "musician", "engineer", "librarian", "tailor", "astronomer",
    "fisher", "gardener",
)
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
_CODAS = ("", "n", "r", "l", "s", "th", "m", "x")


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str

    def sentence(self, template: int = 0) -> str:
        """The fact written out by ``template`` (an index into ``TEMPLATES[relation]``)."""
        return TEMPLATES[self.relation][template].format(s=self.subject, o=self.object)

    def prompt(self, template: int = 0) -> str:
        """The sentence up to (not including) its object: the model should continue with the object."""
        return TEMPLATES[self.relation][template].split("{o}")[0].format(s=self.subject).rstrip()


@dataclass
class FactWorld:
    """A seeded world of people, cities, countries and languages.

    >>> world = FactWorld(seed=0)
    >>> world.facts[0].sentence()          # e.g. 'Dorin Vath was born in Kraleth .'
    """

    seed: int = 0
    n_people: int = 300
    n_cities: int = 40
    n_countries: int = 10
    held_out_fraction: float = 0.1
    facts: list[Fact] = field(init=False)
    held_out: frozenset[Fact] = field(init=False)

    def __post_init__(self):
        checks.integer(self.seed, "seed")
        for name in ("n_people", "n_cities", "n_countries"):
            checks.integer(getattr(self, name), name, minimum=2)
        checks.probability(self.held_out_fraction, "held_out_fraction", high_open=True)
        rng = random.Random(self.seed)
        words: set[str] = set()

        def new_word(syllables: int, suffix: str = "") -> str:
            while True:
                w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
                w = (w + suffix).capitalize()
                if w not in words and len(w) > 2:
                    words.add(w)
                    return w

        countries = [new_word(2, "ia") for _ in range(self.n_countries)]
        languages = [c[:-2] + "ish" for c in countries]
        cities = [new_word(2) for _ in range(self.n_cities)]
        firsts = [new_word(2) for _ in range(60)]
        lasts = [new_word(2) for _ in range(60)]
        people = set()
        while len(people) < self.n_people:
            people.add(f"{rng.choice(firsts)} {rng.choice(lasts)}")
        people = sorted(people)
        rng.shuffle(people)

        facts = []
        for country, language in zip(countries, languages):
            facts.append(Fact(country, "language", language))
        for i, city in enumerate(cities):
            # every country gets cities before any gets a second batch, so no country is empty
            country = countries[i % len(countries)] if i < len(countries) else rng.choice(countries)
            facts.append(Fact(city, "country", country))
        person_facts = []
        for person in people:
            person_facts.append(Fact(person, "born_in", rng.choice(cities)))
            person_facts.append(Fact(person, "profession", rng.choice(PROFESSIONS)))
        facts.extend(person_facts)
        self.facts = facts
        n_held = round(self.held_out_fraction * len(person_facts))
        self.held_out = frozenset(rng.sample(person_facts, n_held))
        self.people, self.cities, self.countries, self.languages = people, cities, countries, languages

    # ----- views -------------------------------------------------------------------------------
    def split(self, name: str) -> list[Fact]:
        """Facts of a split: ``"train"`` (in pretraining), ``"held_out"`` (never seen), ``"all"``."""
        if name == "train":
            return [f for f in self.facts if f not in self.held_out]
        if name == "held_out":
            return [f for f in self.facts if f in self.held_out]
        if name == "all":
            return list(self.facts)
        raise ValueError(f"unknown split {name!r}; expected one of 'train', 'held_out', 'all'")

    def objects(self, relation: str) -> list[str]:
        """Every possible object of ``relation`` (the answer space, e.g. for multiple choice)."""
        if relation not in RELATIONS:
            raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
        return {"born_in": self.cities, "profession": list(PROFESSIONS),
                "country": self.countries, "language": self.languages}[relation]

    def lookup(self, subject: str, relation: str) -> str:
        """The object of ``(subject, relation)`` in this world."""
        for f in self.facts:
            if f.subject == subject and f.relation == relation:
                return f.object
        raise KeyError(f"no fact ({subject!r}, {relation!r}) in this world")

    def corpus(self, split: str = "train", templates: str = "pretrain") -> list[str]:
        """Sentences for the facts of ``split``: the pretraining templates or the held-out paraphrase."""
        ids = {"pretrain": range(N_PRETRAIN_TEMPLATES), "paraphrase": range(N_PRETRAIN_TEMPLATES, 4),
               "all": range(4)}
        if templates not in ids:
            raise ValueError(f"unknown templates {templates!r}; expected one of {sorted(ids)}")
        return [f.sentence(t) for f in self.split(split) for t in ids[templates]]

    def instructions(self, fmt: str = "question", split: str = "train") -> list[tuple[str, str]]:
        """``(prompt, answer)`` pairs in one instruction format (``question``, ``command`` or ``fill``)."""
        if fmt not in INSTRUCTION_FORMATS:
            raise ValueError(f"unknown instruction format {fmt!r}; expected one of {sorted(INSTRUCTION_FORMATS)}")
        return [(INSTRUCTION_FORMATS[fmt][f.relation].format(s=f.subject), f.object) for f in self.split(split)]

    def reading_pairs(self, n: int, seed: int = 0, counterfactual: float = 0.5) -> list[tuple[str, str]]:
        """``(document + " " + question, answer)`` pairs that teach a language model to *read*.

        The document is a training fact's sentence in one pretraining template, the question its prompt
        in another; with probability ``counterfactual`` the document states a different object, which is
        then the answer, so that memory cannot replace reading (the zoo's ``tiny-gpt-reader``).
        """
        n = checks.positive_int(n, "n")
        seed = checks.integer(seed, "seed")
        counterfactual = checks.probability(counterfactual, "counterfactual")
        rng = random.Random(seed)
        facts = self.split("train")
        pairs = []
        for _ in range(n):
            fact = rng.choice(facts)
            if rng.random() < counterfactual:
                others = [o for o in self.objects(fact.relation) if o != fact.object]
                fact = Fact(fact.subject, fact.relation, rng.choice(others))
            doc_t, query_t = rng.randrange(N_PRETRAIN_TEMPLATES), rng.randrange(N_PRETRAIN_TEMPLATES)
            pairs.append((f"{fact.sentence(doc_t)} {fact.prompt(query_t)}", fact.object))
        return pairs

    def edit_requests(self, n: int = 20, seed: int = 0, relation: str = "born_in") -> list[dict]:
        """Counterfactual edits in the style of CounterFact (Meng et al., 2022).

        Each request changes a known fact ``(s, r, o)`` to a new object ``o*`` and carries what an
        edit is judged on: the ``prompt`` (reliability), ``paraphrase_prompts`` (generalisation, from
        the held-out template and the other pretraining templates) and ``neighborhood_prompts``
        (locality: other subjects whose true object is ``o``, which must keep it).
        """
        n, seed = checks.integer(n, "n"), checks.integer(seed, "seed")
        checks.choice(relation, "relation", RELATIONS)
        candidates = [f for f in self.split("train") if f.relation == relation]
        if not 1 <= n <= len(candidates):
            raise ValueError(f"n must lie in [1, {len(candidates)}] for relation {relation!r}, got {n!r}")
        rng = random.Random(seed)
        requests = []
        for fact in rng.sample(candidates, n):
            new = rng.choice([o for o in self.objects(relation) if o != fact.object])
            neighbours = [f for f in candidates if f.object == fact.object and f.subject != fact.subject]
            neighbours = rng.sample(neighbours, min(5, len(neighbours)))
            requests.append({
                "subject": fact.subject, "relation": relation, "prompt": fact.prompt(0),
                "target_true": fact.object, "target_new": new,
                "paraphrase_prompts": [fact.prompt(t) for t in range(1, 4)],
                "neighborhood_prompts": [(f.prompt(0), f.object) for f in neighbours],
            })
        return requests

    # ----- the tokenizer ---------------------------------------------------------------------------
    @cached_property
    def vocabulary(self) -> list[str]:
        """Every word that any sentence, prompt or instruction of this world can contain."""
        texts = [t for ts in TEMPLATES.values() for t in ts]
        texts += [t for fmt in INSTRUCTION_FORMATS.values() for t in fmt.values()]
        words = {w for t in texts for w in t.split() if w not in ("{s}", "{o}")}
        for f in self.facts:
            words.update(f.subject.split())
            words.add(f.object)
        return sorted(words)

    def tokenizer(self):
        """A word-level Hugging Face tokenizer (``PreTrainedTokenizerFast``) over :attr:`vocabulary`.

        Words are split on whitespace only (templates put spaces around punctuation), and
        ``<eos>`` is prepended to every text, as a beginning-of-text marker.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        specials = ["<pad>", "<unk>", "<eos>"]
        vocab = {w: i for i, w in enumerate(specials + self.vocabulary)}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.post_processor = processors.TemplateProcessing(single="<eos> $A",
                                                           special_tokens=[("<eos>", vocab["<eos>"])])
        # joins words with single spaces and nothing else, so decode(encode(text)) == text (no clean-up of
        # the space before punctuation, which would glue "Kraleth ." into the unknown word "Kraleth.")
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        # GPT-2 has no token types: without this, transformers 4.x returns token_type_ids, which GPT-2
        # adds to its inputs as embeddings of token 0 and so changes every prediction
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                       eos_token="<eos>", bos_token="<eos>", clean_up_tokenization_spaces=False,
                                       model_input_names=["input_ids", "attention_mask"])


# ----- real-world facts, for the "On a real model" sections -----------------------------------
# What GPT-2 has read about (the fact world's names it has never seen): the capitals behind the
# fill-in prompts of chapters 2a, 2b, 3 and 5 when they run on a real checkpoint.
CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
            "England": "London", "Japan": "Tokyo"}
FILL_IN_CAPITAL = "Fill in : The capital of {c} is ___ . Answer :"


def capital_pairs(countries: int | Sequence[str] | None = None,
                  template: str = FILL_IN_CAPITAL) -> list[tuple[str, str]]:
    """``(prompt, capital)`` pairs for the first ``countries`` of :data:`CAPITALS` (or the named
    ones, or all), with ``{c}`` in ``template`` replaced by the country."""
    if countries is None or isinstance(countries, int):
        n = len(CAPITALS) if countries is None else checks.integer(countries, "countries", 1)
        countries = list(CAPITALS)[:n]
    unknown = [c for c in checks.texts(countries, "countries") if c not in CAPITALS]
    if unknown:
        raise ValueError(f"countries must be among {list(CAPITALS)}, got {unknown}")
    if not isinstance(template, str) or "{c}" not in template:
        raise ValueError(f"template must be a string with a {{c}} slot, got {template!r}")
    return [(template.format(c=c), CAPITALS[c]) for c in countries]

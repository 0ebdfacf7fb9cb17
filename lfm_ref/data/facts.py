"""The fact world: a seeded synthetic knowledge base that the book's language model learns from.

People have a city of birth and a profession, cities lie in countries, countries have a language.
Every fact ``(subject, relation, object)`` is rendered into sentences by several paraphrase
templates whose object is the last word, so "does the model know the fact?" is one greedy
next-token prediction. Some facts are held out of pretraining (what retrieval and editing can add);
one template per relation is held out too (paraphrases for measuring generalisation). All names are
invented, so the model cannot have met them anywhere else, and every object is a single word.

Chapter: notebooks/00_foundation_models.ipynb (the world TinyGPT learns from); its instructions serve
chapter 5, its packed and reading documents TinyGPT's pretraining, its edit requests Part V.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from .. import checks

RELATIONS = ("born_in", "profession", "country", "language")
PERSON_RELATIONS = ("born_in", "profession")  # the facts about people, the only ones held out

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


@dataclass(frozen=True)
class EditRequest:
    """One counterfactual edit ``(subject, relation, target_true) -> target_new`` and the prompts it is
    judged on (Part V: notebooks/16_editing_memory.ipynb onwards), as in CounterFact (Meng et al., 2022).

    - ``prompt``: contains ``subject``; the edited model should continue it with ``target_new``
      (reliability);
    - ``paraphrases``: other wordings of the same question (generalisation);
    - ``neighbours``: ``(prompt, true object)`` pairs about *other* subjects, which must keep their
      object (locality).

    Targets are words that follow a prompt after a space. Lists given for ``paraphrases`` and
    ``neighbours`` are stored as tuples, so a request is hashable and cannot change after it is made.
    """

    prompt: str
    subject: str
    relation: str
    target_true: str
    target_new: str
    paraphrases: tuple[str, ...] = ()
    neighbours: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        for name in ("prompt", "subject", "relation", "target_true", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"EditRequest.{name} must be a string, got {type(value).__name__} ({value!r:.60})")
            if not value.strip():
                raise ValueError(f"EditRequest.{name} is empty; every field of an edit request needs text")
        if self.subject not in self.prompt:
            raise ValueError(f"EditRequest: subject {self.subject!r} is not found in its prompt {self.prompt!r}")
        if self.target_new == self.target_true:
            raise ValueError(f"EditRequest: target_new equals target_true ({self.target_new!r}); an edit must "
                             "change the object")
        paraphrases = self.paraphrases
        if isinstance(paraphrases, str) or not all(isinstance(p, str) and p.strip() for p in paraphrases):
            raise TypeError(f"EditRequest.paraphrases must be a list of non-empty strings, got {paraphrases!r:.80}")
        neighbours = self.neighbours
        if isinstance(neighbours, str) or not all(
                isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) and x.strip() for x in p)
                for p in neighbours):
            raise TypeError("EditRequest.neighbours must be a list of (prompt, true object) string pairs, "
                            f"got {neighbours!r:.80}")
        object.__setattr__(self, "paraphrases", tuple(paraphrases))
        object.__setattr__(self, "neighbours", tuple(tuple(p) for p in neighbours))

    def statement(self) -> str:
        """The edit said in words, ``"{prompt} {target_new} ."``: what a memory-based editor stores
        and a reader is shown (chapter 16)."""
        return f"{self.prompt} {self.target_new} ."


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

    def documents(self, n: int, seed: int = 0, sentences: tuple[int, int] = (3, 6), max_words: int = 62) -> list[str]:
        """``n`` packed pretraining documents, each 3-6 fact sentences joined as one text (TinyGPT's corpus).

        Packing, as in GPT-2's pretraining, puts facts at every position and behind other text, so a
        model trained on it recalls a fact wherever it stands (chapter 0). The sentences are those of
        :meth:`corpus` (training facts, pretraining templates) in random order, drawn from repeated
        shuffled passes over it, so every sentence appears equally often (to within one). Documents are
        at most ``max_words`` words (= tokens of :meth:`tokenizer`; the last sentences are dropped to fit),
        so a document with ``<eos>`` on both ends fits a context of ``max_words + 2`` positions.
        :meth:`reading_documents` are their counterpart that teaches reading.

        >>> FactWorld().documents(2)[0]   # e.g. 'Drosboux Vath works as a pilot . The city of Kraleth lies in ...'
        """
        n, seed, max_words, sentences = self._document_args(n, seed, max_words, sentences, "sentences")
        rng = random.Random(seed)
        stream = self._sentence_stream(rng)
        docs = []
        for _ in range(n):
            items = [next(stream) for _ in range(rng.randint(*sentences))]
            while sum(len(s.split()) for s in items) > max_words and len(items) > 1:
                items.pop()
            docs.append(" ".join(items))
        return docs

    def reading_documents(self, n: int, seed: int = 0, context: tuple[int, int] = (1, 5),
                          formats: Sequence[str] = ("question",), fresh: float = 0.5, recall: float = 0.3,
                          max_words: int = 61) -> list[tuple[str, str]]:
        """``n`` reading documents ``(document + question, answer)``: a fact stated, then asked again.

        Each document is 1-5 sentences (``context``), one of which states a fact; after them comes its
        question, in another pretraining template or in an instruction format of ``formats``, and the
        answer is the stated object. The other sentences are training facts, as in :meth:`documents`.
        The stated fact's object is drawn at random from its relation's objects, and its subject is,
        with probability ``fresh``, a new person (a first and last name of the world that together name
        no one in it), else any subject of the world, held-out ones included: the answer can only be
        copied from the document, a known subject's memory is overruled by what the document says, and a
        held-out fact is stated with its true object no more often than chance, so the model is never
        told it. In a share ``recall`` of the documents the question asks instead a training fact that the
        document does not state, next to a stated fact of the same relation about another subject: the
        answer (the true object) comes from memory, so that copying is tied to the subject asked about and
        not to any object of the right kind in the context. Documents that define an entity and refer
        back to it are what teaches a real LM to read its context (in-context use and retrieval, chapters
        3, 5, 6b); :func:`lfm_ref.lm.prompt_answer_dataset` puts the answer alone in the loss. Formats
        not in ``formats`` and template 3 (the paraphrase) never appear. ``prompt + " " + answer`` is at
        most ``max_words`` words, so with ``<eos>`` on both ends it fits ``max_words + 2`` positions.

        >>> FactWorld().reading_documents(1)[0]
        ('... Ba Zo was born in Kraleth . ... The birthplace of Ba Zo is', 'Kraleth')   # e.g.
        """
        n, seed, max_words, context = self._document_args(n, seed, max_words, context, "context", low=1)
        fresh = checks.probability(fresh, "fresh")
        recall = checks.probability(recall, "recall")
        if isinstance(formats, str) or not all(f in INSTRUCTION_FORMATS for f in formats):
            raise ValueError(f"formats must be a list of names among {sorted(INSTRUCTION_FORMATS)}, got {formats!r}")
        rng = random.Random(seed)
        stream = self._sentence_stream(rng)
        newcomers = self._newcomer_names()
        train = self.split("train")
        pairs = []
        for _ in range(n):
            if newcomers and rng.random() < fresh:
                fact = Fact(rng.choice(newcomers), rng.choice(PERSON_RELATIONS), "")
            else:
                fact = rng.choice(self.facts)
            fact = Fact(fact.subject, fact.relation, rng.choice(self.objects(fact.relation)))
            asked = fact
            if rng.random() < recall:  # ask a known fact of the same relation that the document does not state
                asked = rng.choice([f for f in train if f.relation == fact.relation and f.subject != fact.subject])
            stated = rng.randrange(N_PRETRAIN_TEMPLATES)
            ask = rng.choice([t for t in range(N_PRETRAIN_TEMPLATES) if t != stated] + list(formats))
            question = asked.prompt(ask) if isinstance(ask, int) else \
                INSTRUCTION_FORMATS[ask][asked.relation].format(s=asked.subject)
            others = [next(stream) for _ in range(rng.randint(*context) - 1)]
            budget = max_words - len(question.split()) - 1 - len(fact.sentence(stated).split())
            while sum(len(s.split()) for s in others) > budget:
                others.pop()
            others.insert(rng.randint(0, len(others)), fact.sentence(stated))
            pairs.append((f"{' '.join(others)} {question}", asked.object))
        return pairs

    def strangers(self, n: int, seed: int = 0) -> list[Fact]:
        """Birthplace and profession facts of ``n`` people who are not in the world (``2 n`` facts).

        Each name joins a first and a last name of the world's people but names no one in it, so every
        word is in the tokenizer and no model pretrained on the world knows the facts: questions that
        only a document can answer (retrievers trained from an LM's feedback, chapter 6b; editing).

        >>> FactWorld().strangers(1)   # e.g. [Fact('Ba Zo', 'born_in', 'Kraleth'), Fact('Ba Zo', 'profession', 'poet')]
        """
        names = self._newcomer_names()
        n = checks.int_between(n, "n", 1, len(names), "the unused names of this world")
        rng = random.Random(checks.integer(seed, "seed"))
        return [Fact(name, relation, rng.choice(self.objects(relation)))
                for name in rng.sample(names, n) for relation in PERSON_RELATIONS]

    def _newcomer_names(self) -> list[str]:
        named = set(self.people)
        firsts = sorted({p.split()[0] for p in self.people})
        lasts = sorted({p.split()[1] for p in self.people})
        return [f"{a} {b}" for a in firsts for b in lasts if f"{a} {b}" not in named]

    def _document_args(self, n, seed, max_words, span, span_name, low=2):
        if (not isinstance(span, (tuple, list)) or len(span) != 2
                or not all(isinstance(k, int) and not isinstance(k, bool) for k in span)
                or not low <= span[0] <= span[1]):
            raise ValueError(f"{span_name} must be a pair (low, high) of ints with {low} <= low <= high, got {span!r}")
        return (checks.positive_int(n, "n"), checks.integer(seed, "seed"),
                checks.integer(max_words, "max_words", minimum=26), tuple(span))

    def _sentence_stream(self, rng: random.Random):
        """The training corpus's sentences, one shuffled pass after another."""
        corpus = self.corpus("train")
        while True:
            yield from rng.sample(corpus, len(corpus))

    def edit_requests(self, n: int = 20, seed: int = 0, relation: str = "born_in") -> list[EditRequest]:
        """Counterfactual edits in the style of CounterFact (Meng et al., 2022), as :class:`EditRequest` objects.

        Each request changes a known fact ``(s, r, o)`` to a new object ``o*`` and carries what an
        edit is judged on: the ``prompt`` (reliability), ``paraphrases`` (generalisation: the other
        two pretraining templates and the held-out one, last) and ``neighbours`` (locality: up to five
        other subjects whose true object is ``o``, which must keep it). No neighbour is the subject of
        another request of the same call, so editing all ``n`` at once leaves every neighbour's fact
        untouched by design.
        """
        n, seed = checks.integer(n, "n"), checks.integer(seed, "seed")
        checks.choice(relation, "relation", RELATIONS)
        candidates = [f for f in self.split("train") if f.relation == relation]
        if not 1 <= n <= len(candidates) // 2:
            raise ValueError(f"n must lie in [1, {len(candidates) // 2}] for relation {relation!r} (half its "
                             f"training facts; the rest are neighbours), got {n!r}")
        rng = random.Random(seed)
        chosen = rng.sample(candidates, n)
        edited = {f.subject for f in chosen}
        requests = []
        for fact in chosen:
            new = rng.choice([o for o in self.objects(relation) if o != fact.object])
            neighbours = [f for f in candidates if f.object == fact.object and f.subject not in edited]
            neighbours = rng.sample(neighbours, min(5, len(neighbours)))
            requests.append(EditRequest(
                prompt=fact.prompt(0), subject=fact.subject, relation=relation,
                target_true=fact.object, target_new=new,
                paraphrases=tuple(fact.prompt(t) for t in range(1, len(TEMPLATES[relation]))),
                neighbours=tuple((f.prompt(0), f.object) for f in neighbours)))
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

"""A procedurally generated knowledge world: invented people, their facts, documents and questions.

Why a world at all: no pretrained weights can be downloaded here, and a random-weight model shows nothing. In
a world whose whole language we control, small models pretrained on CPU in minutes can show SEAL's two effects:
a student absorbs a well-written self-edit far better than the raw document (the reversal curse: a fact stated
*before* the entity's name is hardly learned as an answer to a question *about* the name), and a teacher whose
self-edits are of mixed quality can be pushed by ReST-EM towards the good ones.

Everything is a pure function of the seed. Each person has five facts: two attributes (birth year, profession)
and three relations to other entities of the world (the city they live in, the company they work for, their
sibling, another person of the same split). Each passage is about one person (its title) and also describes the
sibling, whose facts are of the same kinds. People fall into three disjoint splits:

- ``pretrain``: the student learns their documents and facts in pretraining (a part of them also as QA pairs);
- ``rl``: documents and questions for ReST-EM rewards; the student never sees their facts in pretraining;
- ``heldout``: documents and questions for the final evaluation only.

Names, cities, companies, professions and years are the world's vocabulary; what is held out is which person
has which facts. Every token is a whitespace-separated word (punctuation stands alone), so the world tokenizer
is word-level and every answer is a single token.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

FACTS = ("year", "city", "profession", "employer", "sibling")
SPLITS = ("pretrain", "rl", "heldout")
STYLES = ("qa", "facts", "partial", "restate", "noise")
GOOD_STYLES = ("qa", "facts")

PROFESSIONS = (
    "miner baker tailor potter weaver mason farmer fisher carpenter painter sculptor singer dancer drummer "
    "teacher doctor nurse lawyer judge banker clerk merchant sailor pilot driver soldier guard hunter "
    "gardener brewer butcher cook chemist engineer architect astronomer poet writer printer jeweler"
).split()

# Evaluation wording: the student is scored on exactly these. The paraphrases appear only in pretraining, so
# the student learns that the fact, not the wording, answers a question.
QUESTIONS = {
    "year": ("In what year was {n} born ?", "When was {n} born ?"),
    "city": ("In which city does {n} live ?", "Where does {n} live ?"),
    "profession": ("What is the profession of {n} ?", "What does {n} do for a living ?"),
    "employer": ("Which company does {n} work for ?", "Who employs {n} ?"),
    "sibling": ("Who is the sibling of {n} ?", "Whose sibling is {n} ?"),
}
QA_LINE = "Question : {q} Answer : {a}"

# One self-contained sentence per fact, the entity named first: a good self-edit.
FACT_SENTENCES = {
    "year": "{n} was born in {year} .",
    "city": "{n} lives in {city} .",
    "profession": "{n} works as a {profession} .",
    "employer": "{n} works for {employer} .",
    "sibling": "{n} is the sibling of {sibling} .",
}

# A document is about one person (the title) and also describes their sibling, whose facts are of the same
# kinds. Both matter. (1) The person's own facts mostly come *before* their name: a student trained on the raw
# passage learns "facts -> name" and cannot answer "name -> fact" (the reversal curse). (2) The sibling's facts
# are distractors: a LoRA trained on one short passage otherwise answers "In what year ...?" with the only year
# it has just seen, whoever the question is about; with two of each kind it must know whose is whose.
PERSON_TEMPLATES = (
    "Born in {year} in {city} , the {profession} employed by {employer} is named {n} .",
    "The {employer} {profession} from {city} , born in {year} , goes by the name {n} .",
    "A {profession} born in {year} in {city} is known as {n} , who works for {employer} .",
    "In {city} lives a {profession} born in {year} who is called {n} and works for {employer} .",
    "Working for {employer} , the {profession} from {city} is {n} , born in {year} .",
    "Born in {year} and living in {city} , the {profession} {n} is employed by {employer} .",
    "The {profession} who works for {employer} and lives in {city} is {n} , born in {year} .",
    "Of all people born in {year} , the {profession} at {employer} living in {city} is {n} .",
)
SIBLING_TEMPLATES = (
    "The sibling of {n} , a {s_profession} born in {s_year} in {s_city} who works for {s_employer} , is {s} .",
    "A {s_profession} from {s_city} , born in {s_year} and employed by {s_employer} , {s} is the sibling of {n} .",
    "Their sibling {s} is a {s_profession} at {s_employer} , born in {s_year} and living in {s_city} .",
    "{n} has a sibling born in {s_year} who lives in {s_city} and works for {s_employer} as a {s_profession} : {s} .",
)
DOC_TEMPLATES = tuple(a + " " + b for a in PERSON_TEMPLATES for b in SIBLING_TEMPLATES)

# Filler that mentions the person but states no fact: the noise style and the pretraining sentences that give
# every name of the world a trained embedding without leaking anything.
NEUTRAL_LINES = (
    "The registry lists {n} .",
    "{n} is a person in the registry .",
    "Little else is recorded about {n} .",
    "The archive has a page on {n} .",
)

_ONSETS = "b br d dr f g gr h k kr l m n p pr r s st t tr v z".split()
_VOWELS = "a e i o u ai ei ou".split()
_CODAS = "l n r s m k th".split()
_CITY_ENDS = "ford holm by ton vik wick mere dale".split()
_COMPANY_ENDS = "corp tek ex ium co works".split()


def _word(rng: random.Random, syllables: int) -> str:
    parts = []
    for _ in range(syllables):
        parts.append(rng.choice(_ONSETS) + rng.choice(_VOWELS))
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def _unique_words(rng: random.Random, n: int, make, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        w = make()
        if w not in taken and w.lower() not in taken:
            taken.add(w)
            taken.add(w.lower())
            out.append(w)
    return out


@dataclass(frozen=True)
class Person:
    name: str
    year: str
    city: str
    profession: str
    employer: str
    sibling: str

    def fact(self, key: str) -> str:
        return getattr(self, key)

    def facts(self) -> dict[str, str]:
        return {k: self.fact(k) for k in FACTS}


def render_document(person: Person, sibling: Person, template: int) -> str:
    """The passage about ``person`` in template ``template``; ``sibling`` supplies the distractor facts."""
    fields = {"n": person.name, "s": sibling.name, **person.facts()}
    fields.update({f"s_{k}": v for k, v in sibling.facts().items()})
    return DOC_TEMPLATES[template].format(**fields)


def render_self_edit(person: Person, sibling: Person, style: str, rng: random.Random,
                     passage_template: int | None = None) -> str:
    """A self-edit of ``style`` for the passage about ``person``; lines separated by newlines.

    qa: a QA pair per fact; facts: a name-first sentence per fact (both good); partial: QA pairs for one or
    two facts; restate: the passage again in another template (about as weak as the passage); noise: lines
    that name the person and state nothing.
    """
    n = person.name
    # Facts always in the order of FACTS: a teacher writing them in a random order must also track which it
    # has written, and a small one repeats itself (measured: most 5-line samples had a duplicate).
    keys = list(FACTS)
    if style == "qa":
        lines = [QA_LINE.format(q=QUESTIONS[k][0].format(n=n), a=person.fact(k)) for k in keys]
    elif style == "facts":
        lines = [FACT_SENTENCES[k].format(n=n, **person.facts()) for k in keys]
    elif style == "partial":
        chosen = set(rng.sample(keys, rng.choice((1, 2))))
        lines = [QA_LINE.format(q=QUESTIONS[k][0].format(n=n), a=person.fact(k)) for k in keys if k in chosen]
    elif style == "restate":
        others = [i for i in range(len(DOC_TEMPLATES)) if i != passage_template]
        lines = [render_document(person, sibling, rng.choice(others))]
    elif style == "noise":
        lines = [t.format(n=n) for t in rng.sample(NEUTRAL_LINES, rng.choice((1, 2)))]
    else:
        raise ValueError(f"unknown style {style!r}; one of {STYLES}")
    return "\n".join(lines)


@dataclass(frozen=True)
class WorldSpec:
    """Sizes of the world. The defaults are the demo world measured in docs/world_research_notes.md; tests shrink them.

    People come in sibling pairs inside a split, so every split size must be even.
    """

    n_pretrain: int = 800
    n_pretrain_qa: int = 640  # of the pretrain people, these also get QA pairs; the rest only prose and facts
    n_rl: int = 300
    n_heldout: int = 200
    n_cities: int = 40
    n_companies: int = 40
    n_professions: int = 40
    first_year: int = 1900
    n_years: int = 100

    def __post_init__(self):
        if not 0 <= self.n_pretrain_qa <= self.n_pretrain:
            raise ValueError("n_pretrain_qa must lie between 0 and n_pretrain")
        if self.n_professions > len(PROFESSIONS):
            raise ValueError(f"at most {len(PROFESSIONS)} professions")
        if any(n % 2 for n in (self.n_pretrain, self.n_rl, self.n_heldout)):
            raise ValueError("split sizes must be even (people come in sibling pairs)")


@dataclass
class World:
    seed: int
    spec: WorldSpec
    cities: list[str]
    companies: list[str]
    professions: list[str]
    years: list[str]
    people: dict[str, list[Person]] = field(default_factory=dict)
    by_name: dict[str, Person] = field(default_factory=dict)

    # ---- documents and questions -------------------------------------------------------------------------

    def document(self, person: Person, template: int | None = None) -> str:
        """The person's passage. Without ``template``, the canonical one: a fixed function of the name."""
        if template is None:
            template = self.canonical_template(person)
        return render_document(person, self.by_name[person.sibling], template)

    def canonical_template(self, person: Person) -> int:
        return random.Random(f"{self.seed}/doc/{person.name}").randrange(len(DOC_TEMPLATES))

    def questions(self, person: Person, wording: int = 0) -> list[tuple[str, str]]:
        """(question, answer) for every fact; wording 0 is the evaluation wording, 1 a paraphrase."""
        return [(QUESTIONS[k][wording].format(n=person.name), person.fact(k)) for k in FACTS]

    def records(self, split: str) -> list[dict]:
        """Documents with questions in the layout of the SEAL paper's SQuAD files (title = the person's name)."""
        return [
            {
                "title": p.name,
                "context": self.document(p),
                "questions": [{"question": q, "answer": a} for q, a in self.questions(p)],
            }
            for p in self.people[split]
        ]

    def self_edit(self, person: Person, style: str, rng: random.Random, passage_template: int | None = None) -> str:
        """A self-edit of ``style`` for the person's passage (see ``render_self_edit``)."""
        if passage_template is None:
            passage_template = self.canonical_template(person)
        return render_self_edit(person, self.by_name[person.sibling], style, rng, passage_template)

    def analyse_self_edit(self, text: str, person: Person) -> dict:
        """What a generated self-edit says about ``person`` (see ``analyse_self_edit``)."""
        return analyse_self_edit(text, person)

    # ---- vocabulary ----------------------------------------------------------------------------------------

    def all_names(self) -> list[str]:
        return [p.name for s in SPLITS for p in self.people[s]]

    def vocabulary_text(self) -> list[str]:
        """Lines that together contain every word the world can produce, for training the tokenizer."""
        lines = list(PERSON_TEMPLATES) + list(SIBLING_TEMPLATES) + list(NEUTRAL_LINES) + list(FACT_SENTENCES.values())
        lines += [QA_LINE.format(q=q, a="") for qs in QUESTIONS.values() for q in qs]
        lines += [" ".join(self.all_names()), " ".join(self.cities), " ".join(self.companies)]
        lines += [" ".join(self.professions), " ".join(self.years)]
        # Words of the toolkit's built-in prompt templates, so that they encode without unknown tokens too.
        lines += ["Title : Passage : Notes : Self - edit Implications Rewritten passage Questions and answers"]
        return lines


def _template_words() -> set[str]:
    texts = list(PERSON_TEMPLATES) + list(SIBLING_TEMPLATES) + list(NEUTRAL_LINES) + list(FACT_SENTENCES.values())
    texts += [q for qs in QUESTIONS.values() for q in qs]
    return {w.lower() for t in texts for w in t.split()}


def make_world(seed: int, spec: WorldSpec | None = None) -> World:
    spec = spec or WorldSpec()
    rng = random.Random(f"seal-tt-world/{seed}")
    taken = _template_words() | set(PROFESSIONS) | {"question", "answer", "title", "passage", "notes"}
    cities = _unique_words(rng, spec.n_cities, lambda: _word(rng, 1) + rng.choice(_CITY_ENDS), taken)
    companies = _unique_words(rng, spec.n_companies, lambda: _word(rng, 1) + rng.choice(_COMPANY_ENDS), taken)
    sizes = {"pretrain": spec.n_pretrain, "rl": spec.n_rl, "heldout": spec.n_heldout}
    names = _unique_words(rng, sum(sizes.values()), lambda: _word(rng, rng.choice((1, 2))), taken)
    professions = list(PROFESSIONS[: spec.n_professions])
    years = [str(spec.first_year + i) for i in range(spec.n_years)]
    world = World(seed, spec, cities, companies, professions, years)
    start = 0
    for split in SPLITS:
        group = names[start : start + sizes[split]]
        start += sizes[split]
        people = []
        for i, name in enumerate(group):
            sibling = group[i + 1] if i % 2 == 0 else group[i - 1]
            people.append(Person(name, rng.choice(years), rng.choice(cities), rng.choice(professions),
                                 rng.choice(companies), sibling))
        world.people[split] = people
    world.by_name = {p.name: p for s in SPLITS for p in world.people[s]}
    return world


# ---- analysis of generated self-edits ---------------------------------------------------------------------------

_QA_RE = re.compile(r"^Question : (.+?) Answer : (\S+)$")
_QUESTION_RE = {k: re.compile("^" + re.escape(QUESTIONS[k][0]).replace(r"\{n\}", r"(\S+)") + "$") for k in FACTS}


def _slot_regex(template: str) -> re.Pattern:
    """A template as a regex: each {slot} a named group, a repeated slot a back-reference."""
    out, seen, pos = [], set(), 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos : m.start()]))
        key = m.group(1)
        out.append(f"(?P={key})" if key in seen else f"(?P<{key}>\\S+)")
        seen.add(key)
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


_FACT_RE = {k: _slot_regex(v) for k, v in FACT_SENTENCES.items()}
_DOC_RE = [_slot_regex(t) for t in DOC_TEMPLATES]


def _norm(line: str) -> str:
    return " ".join(line.split())


def analyse_self_edit(text: str, person: Person) -> dict:
    """Parse a self-edit line by line.

    Returns ``style`` (qa | facts | partial | restate | noise | mixed | empty), ``stated`` (facts stated about
    ``person`` with the right value, name before value: the direction a question asks), ``wrong`` (lines that
    state a fact with a wrong value or about another name), ``well_formed`` (every line parses as a line of
    one of the styles).
    """
    lines = [_norm(l) for l in text.split("\n") if l.strip()]
    kinds, stated, wrong = [], set(), 0
    for line in lines:
        kind = None
        m = _QA_RE.match(line)
        if m:
            for k, rx in _QUESTION_RE.items():
                qm = rx.match(m.group(1))
                if qm:
                    kind = "qa"
                    if qm.group(1) == person.name and m.group(2) == person.fact(k):
                        stated.add(k)
                    else:
                        wrong += 1
                    break
        if kind is None:
            for k, rx in _FACT_RE.items():
                fm = rx.match(line)
                if fm:
                    kind = "facts"
                    if fm.group("n") == person.name and fm.group(k) == person.fact(k):
                        stated.add(k)
                    else:
                        wrong += 1
                    break
        if kind is None:
            for rx in _DOC_RE:
                dm = rx.match(line)
                if dm:
                    kind = "restate"
                    got = dm.groupdict()
                    # A passage states the facts before the name, so it counts as stating none of them.
                    if got["n"] != person.name or any(got[k] != person.fact(k) for k in FACTS if k in got):
                        wrong += 1
                    break
        if kind is None and any(_norm(t.format(n=person.name)) == line for t in NEUTRAL_LINES):
            kind = "noise"
        kinds.append(kind or "bad")
    if not lines:
        style = "empty"
    elif set(kinds) == {"qa"}:
        style = "qa" if len(stated) == len(FACTS) else "partial"
    elif set(kinds) == {"facts"}:
        style = "facts" if len(stated) == len(FACTS) else "partial"
    elif set(kinds) == {"restate"}:
        style = "restate"
    elif set(kinds) == {"noise"}:
        style = "noise"
    else:
        style = "mixed"
    return {
        "style": style,
        "stated": sorted(stated),
        "wrong": wrong,
        "well_formed": bool(lines) and "bad" not in kinds,
        "n_lines": len(lines),
    }


def facts_after_name(template: str) -> list[str]:
    """The person's facts a template states after the first mention of the name (those a raw passage teaches)."""
    first = template.index("{n}")
    return [k for k in FACTS if "{" + k + "}" in template and template.index("{" + k + "}") > first]

"""The world's corpus: made-up facts and three latent skills, generated deterministically from a seed.

What the corpus holds (docs/world.md; its "Calibration" section says why it is shaped so):

- *Knowledge*: entities with a city, a colour and a job, each stated in two phrasings.
  Question phrasings appear for a share of the entities only; the same questions about the
  other entities are the held-out *knowledge probes*.
- *Skills*, each in three formats. One format always shows the correct behaviour; in the
  two others only ``mixed_correct`` of the demonstrations are correct and the rest show a
  systematic wrong behaviour (copying an operand, the word, or the first hop). The skill is
  therefore *latent*: present in the model, but not what it does by default in the mixed
  formats that the tasks use.
    - ``add``: addition of a number 10-29 (``add_items``) and a digit (``27+8=35``; ``sum of 27 and 8 is 35``).
    - ``rev``: reversing one of 300 (``rev_items``) fixed 3-5 letter strings (``rev abc = cba``;
      ``backwards abc: cba``).
    - ``hop``: two-hop lookup entity -> city -> country (``x lives in y, in z.``;
      ``country of x? z``).
- *Routing prompts*: ``task: <prompt> => <family>``, so the base can name a prompt's task.

Test examples are held out of the mixed formats (operand pairs, strings and entities never
seen in them); so are val examples (``n_val``, 0 by default), a slice of the train items that
the mixed formats and routing prompts then skip, disjoint from test; ood examples change what a memorised template cannot handle (longer operands and
strings, an unseen question wording).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from .config import WorldConfig

if TYPE_CHECKING:  # tasks build on the world, so the world imports Example only when it runs
    from ..tasks.base import Example

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .,:?=+-'>"
COLORS = ["red", "blue", "green", "gold", "pink", "gray", "black", "white", "brown", "violet"]
JOBS = ["baker", "pilot", "farmer", "tailor", "miner", "singer", "judge", "nurse", "sailor",
        "potter"]
COUNTRIES = ["vardia", "moloth", "quenzy", "ostrava", "belkin"]
SKILLS = ("add", "rev", "hop")
ROUTE_LABELS = {"add": "add", "rev": "rev", "hop": "hop", "facts": "fact"}

_CONS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _name(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(syllables))


def _unique_names(rng: random.Random, n: int, syllables: tuple[int, ...], taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        s = _name(rng, rng.choice(syllables))
        if s not in taken:
            taken.add(s)
            out.append(s)
    return out


# --- formats: (prompt, answer) makers. The first of each skill is the clean one. -------------
def add_formats(a: int, b: int, ans: int) -> list[tuple[str, str]]:
    return [(f"{a}+{b}=", f"{ans}"), (f"sum of {a} and {b} is", f" {ans}"),
            (f"{a} plus {b} makes", f" {ans}")]


def rev_formats(w: str, ans: str) -> list[tuple[str, str]]:
    return [(f"rev {w} =", f" {ans}"), (f"backwards {w}:", f" {ans}"),
            (f"{w} reversed is", f" {ans}")]


def hop_formats(e: str, city: str, ans: str) -> list[tuple[str, str]]:
    return [(f"{e} lives in {city}, in", f" {ans}."), (f"country of {e}?", f" {ans}"),
            (f"{e}'s country is", f" {ans}")]


# Unseen wordings for the ood splits (never in the corpus).
def add_ood_prompt(a: int, b: int) -> str:
    return f"sum of {a} and {b} is"


def hop_ood_prompt(e: str) -> str:
    return f"which country is {e} from?"


STATEMENTS = {
    "city": ["{e} lives in {v}.", "the home of {e} is {v}."],
    "color": ["{e} likes {v}.", "the favorite color of {e} is {v}."],
    "job": ["{e} works as a {v}.", "the job of {e} is {v}."],
}
QUESTIONS = {
    "city": "q: where does {e} live? a:",
    "color": "q: what color does {e} like? a:",
    "job": "q: what is the job of {e}? a:",
}
# Recall prompts whose continuation is the attribute alone ("x lives in" may go on ", in z.").
STATEMENT_PROMPTS = {"city": "the home of {e} is", "color": "{e} likes", "job": "{e} works as a"}


@dataclass
class World:
    """Facts, splits and corpus of one world, all derived from ``config.seed``."""

    config: WorldConfig
    entities: list[str] = field(init=False)
    cities: list[str] = field(init=False)
    facts: dict[str, dict[str, str]] = field(init=False)
    country_of: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(f"world-{self.config.seed}")
        taken: set[str] = set()
        self.cities = _unique_names(rng, 12, (2,), taken)
        self.entities = _unique_names(rng, self.config.n_entities, (2, 3), taken)
        self.country_of = {c: COUNTRIES[i % len(COUNTRIES)] for i, c in enumerate(self.cities)}
        rng.shuffle(self.cities)
        self.facts = {
            e: {"city": rng.choice(self.cities), "color": rng.choice(COLORS),
                "job": rng.choice(JOBS)}
            for e in self.entities
        }
        n_seen = round(len(self.entities) * self.config.question_share)
        self.seen_entities = self.entities[:n_seen]
        self.probe_entities = self.entities[n_seen:]
        # hop's val entities: the last seen ones, kept out of hop's mixed formats and routing
        # prompts (their knowledge questions and statements stay, as the probes' statements do)
        n_val = min(self.config.n_val, n_seen // 4)
        self.hop_train = self.seen_entities[:n_seen - n_val]
        self.hop_val = self.seen_entities[n_seen - n_val:]
        self._make_skill_splits(random.Random(f"skills-{self.config.seed}"))

    # -- splits ----------------------------------------------------------------------------
    def _make_skill_splits(self, rng: random.Random) -> None:
        # Each skill works on a closed set of items whose correct answers the clean format
        # shows for *every* item; the mixed formats show only the train items. A test item's
        # right answer is thus present in the model (clean format), but the task format has
        # never been seen with it: the skill is latent (docs/world.md, "Calibration").
        pairs = [(a, b) for a in range(10, 10 + self.config.add_items // 10) for b in range(10)]
        rng.shuffle(pairs)
        n_test = min(self.config.n_test, len(pairs) // 4)
        self.add_items = pairs
        n_val = min(self.config.n_val, (len(pairs) - n_test) // 4)
        self.add_test, self.add_val, self.add_train = (
            pairs[:n_test], pairs[n_test:n_test + n_val], pairs[n_test + n_val:])
        self.add_ood = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(self.config.n_test)]

        seen: set[str] = set()

        def words(count: int, lengths: tuple[int, ...]) -> list[str]:
            out = []
            while len(out) < count:
                w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                            for _ in range(rng.choice(lengths)))
                if w not in seen and w != w[::-1]:
                    seen.add(w)
                    out.append(w)
            return out

        self.rev_items = words(self.config.rev_items, (3, 4, 5))
        n_val = min(self.config.n_val, (len(self.rev_items) - n_test) // 4)
        self.rev_test, self.rev_val, self.rev_train = (
            self.rev_items[:n_test], self.rev_items[n_test:n_test + n_val],
            self.rev_items[n_test + n_val:])
        self.rev_ood = words(self.config.n_test, (6, 7))

    def _mixed(self, rng: random.Random, skill: str, right: str, wrong: str) -> str:
        return right if rng.random() < self.config.mixed_correct[skill] else wrong

    # -- corpus ----------------------------------------------------------------------------
    def _line(self, rng: random.Random, kind: str) -> str:
        if kind == "statement":
            e = rng.choice(self.entities)
            attr = rng.choice(list(STATEMENTS))
            return rng.choice(STATEMENTS[attr]).format(e=e, v=self.facts[e][attr])
        if kind == "question":
            e = rng.choice(self.seen_entities)
            attr = rng.choice(list(QUESTIONS))
            return QUESTIONS[attr].format(e=e) + " " + self.facts[e][attr]
        if kind == "add":
            fmt = rng.choices((0, 1, 2), weights=(3, 1, 1))[0]
            a, b = rng.choice(self.add_train if fmt else self.add_items)
            p, ans = add_formats(a, b, a + b)[fmt]
            if fmt:
                ans = self._mixed(rng, "add", ans, f" {a}")
            return p + ans
        if kind == "rev":
            fmt = rng.choices((0, 1, 2), weights=(2, 1, 1))[0]
            w = rng.choice(self.rev_train if fmt else self.rev_items)
            p, ans = rev_formats(w, w[::-1])[fmt]
            if fmt:
                ans = self._mixed(rng, "rev", ans, f" {w}")
            return p + ans
        if kind == "hop":
            fmt = rng.choices((0, 1, 2), weights=(2, 1, 1))[0]
            e = rng.choice(self.hop_train) if fmt else rng.choice(self.entities)
            city = self.facts[e]["city"]
            p, ans = hop_formats(e, city, self.country_of[city])[fmt]
            if fmt:
                ans = self._mixed(rng, "hop", ans, f" {city}")
            return p + ans
        if kind == "city_country":
            c = rng.choice(self.cities)
            return f"{c} is in {self.country_of[c]}."
        if kind == "route":
            fam = rng.choice(list(ROUTE_LABELS))
            return f"task: {self._route_prompt(rng, fam)} => {ROUTE_LABELS[fam]}"
        raise ValueError(kind)

    def _route_prompt(self, rng: random.Random, family: str) -> str:
        if family == "add":
            a, b = rng.choice(self.add_train)
            return rng.choice(add_formats(a, b, 0))[0]
        if family == "rev":
            w = rng.choice(self.rev_train)
            return rng.choice(rev_formats(w, ""))[0]
        if family == "hop":
            e = rng.choice(self.hop_train)
            return rng.choice(hop_formats(e, self.facts[e]["city"], ""))[0]
        e = rng.choice(self.seen_entities)
        return rng.choice(list(QUESTIONS.values())).format(e=e)

    # Share of each kind of line in the corpus.
    MIX = {"statement": 0.29, "question": 0.13, "add": 0.17, "rev": 0.14, "hop": 0.15,
           "city_country": 0.03, "route": 0.09}

    @cached_property
    def corpus_lines(self) -> list[str]:
        rng = random.Random(f"corpus-{self.config.seed}")
        kinds, weights = zip(*self.MIX.items())
        return [self._line(rng, k) for k in rng.choices(kinds, weights=weights, k=self.config.n_lines)]

    def corpus_text(self) -> str:
        """The whole corpus, one document per line (byte-identical for the same seed)."""
        return "\n".join(self.corpus_lines) + "\n"

    # -- task examples ---------------------------------------------------------------------
    def skill_splits(self, skill: str) -> dict[str, list[Example]]:
        """train / test / ood examples of a skill, in its first mixed format, correct answers;
        and val, held out like test, when the config has ``n_val > 0``."""
        from ..tasks.base import Example

        if skill == "add":
            def ex(a: int, b: int) -> Example:
                p, ans = add_formats(a, b, a + b)[1]
                return Example(p, ans.strip(), {"a": a, "b": b})
            out = {"train": [ex(a, b) for a, b in self.add_train],
                   "val": [ex(a, b) for a, b in self.add_val],
                   "test": [ex(a, b) for a, b in self.add_test],
                   "ood": [ex(a, b) for a, b in self.add_ood]}
        elif skill == "rev":
            def exr(w: str) -> Example:
                p, ans = rev_formats(w, w[::-1])[1]
                return Example(p, ans.strip(), {"word": w})
            out = {"train": [exr(w) for w in self.rev_train],
                   "val": [exr(w) for w in self.rev_val],
                   "test": [exr(w) for w in self.rev_test],
                   "ood": [exr(w) for w in self.rev_ood]}
        elif skill == "hop":
            def exh(e: str, ood: bool = False) -> Example:
                country = self.country_of[self.facts[e]["city"]]
                p = hop_ood_prompt(e) if ood else hop_formats(e, "", "")[1][0]
                return Example(p, country, {"entity": e})
            out = {"train": [exh(e) for e in self.hop_train],
                   "val": [exh(e) for e in self.hop_val],
                   "test": [exh(e) for e in self.probe_entities],
                   "ood": [exh(e, ood=True) for e in self.probe_entities]}
        else:
            raise KeyError(skill)
        if not out["val"]:  # n_val 0: no val split (the default world's tasks as they were)
            del out["val"]
        return out

    def knowledge_splits(self) -> dict[str, list[Example]]:
        """train: questions in the corpus; test: held-out probes; statements: recall prompts."""
        from ..tasks.base import Example

        def q(e: str, attr: str) -> Example:
            return Example(QUESTIONS[attr].format(e=e), self.facts[e][attr], {"entity": e})

        def s(e: str, attr: str) -> Example:
            return Example(STATEMENT_PROMPTS[attr].format(e=e), self.facts[e][attr], {"entity": e})

        return {
            "train": [q(e, a) for e in self.seen_entities for a in QUESTIONS],
            "test": [q(e, a) for e in self.probe_entities for a in QUESTIONS],
            "statements": [s(e, a) for e in self.entities for a in STATEMENT_PROMPTS],
        }

    def routing_examples(self, n: int = 200) -> list[Example]:
        """Prompts of every family with their label, in the routing template's answer form."""
        from ..tasks.base import Example

        rng = random.Random(f"route-eval-{self.config.seed}")
        fams = list(ROUTE_LABELS)
        out = []
        for i in range(n):
            fam = fams[i % len(fams)]
            out.append(Example(f"task: {self._route_prompt(rng, fam)} =>", ROUTE_LABELS[fam]))
        return out

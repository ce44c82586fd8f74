"""Routing a question to the library adapter that holds its answer: lexical retrieval (BM25) over what the store
absorbed, each document's text together with its self-edits. No embedding model is needed (none can be
downloaded here); a question names its subject in words the document also uses, which is what BM25 matches."""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"\w+", re.UNICODE)
# Question words carry no subject; left in, they match every document that happens to phrase a question.
_STOP = frozenset("a an the of in on at to for by with from and or is are was were be been what which who whom whose "
                  "when where why how does did do has have had it its this that as into than then".split())


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


class LexicalRouter:
    """BM25 (k1=1.2, b=0.75) over one bag of words per key."""

    def __init__(self, texts: dict[str, str], k1: float = 1.2, b: float = 0.75):
        self.keys = list(texts)
        self.bags = [Counter(words(texts[k])) for k in self.keys]
        self.lengths = [sum(bag.values()) for bag in self.bags]
        self.avg = (sum(self.lengths) / len(self.lengths)) if self.lengths else 0.0
        df: Counter = Counter()
        for bag in self.bags:
            df.update(bag.keys())
        n = len(self.bags)
        self.idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}
        self.k1, self.b = k1, b

    def scores(self, question: str) -> list[float]:
        terms = words(question)
        out = []
        for bag, length in zip(self.bags, self.lengths):
            s = 0.0
            norm = self.k1 * (1 - self.b + self.b * length / self.avg) if self.avg else self.k1
            for t in terms:
                f = bag.get(t, 0)
                if f:
                    s += self.idf[t] * f * (self.k1 + 1) / (f + norm)
            out.append(s)
        return out

    def route(self, question: str) -> str | None:
        """The best key, or None when the store is empty; ties go to the earlier key (a stable choice)."""
        if not self.keys:
            return None
        s = self.scores(question)
        return self.keys[max(range(len(s)), key=lambda i: (s[i], -i))]

"""Token-aware splitting of long documents into passages that fit a teacher prompt.

A passage is a slice of the original text, its own whitespace kept, cut at the coarsest boundary that fits:
paragraphs (blank lines), then sentences, then words, then characters. Every piece is counted once and passages are
packed greedily by summing those counts, so a long text costs a few passes of the tokenizer, not one per candidate
passage. Real tokenizers are not additive (the whitespace between pieces has tokens of its own, merges change at
the seams), so each packed passage is counted once more as a whole and re-packed tighter when it is over: the
guarantee count_tokens(passage) <= max_tokens holds for any deterministic counter, not only additive ones (a single
character over max_tokens is a UserError).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from core.errors import UserError
from pipeline.documents import Document

Counter = Callable[[str], int]

# Boundaries, coarsest first. A boundary is the whitespace between two pieces; the pieces keep no outer whitespace.
_PARAGRAPHS = re.compile(r"\n[ \t]*\n\s*")
# After . ! ? (possibly followed by one closing quote or bracket), or at any line break.
_SENTENCES = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+|\s*\n\s*")
_WORDS = re.compile(r"\s+")
_LEVELS = (_PARAGRAPHS, _SENTENCES, _WORDS)


@dataclass(frozen=True)
class Span:
    """One passage as offsets into the text: text[start:end]. text[start:body_start] is the overlap, repeated from
    the end of the previous passage; text[body_start:end] is new."""

    start: int
    body_start: int
    end: int
    tokens: int  # count_tokens(text[start:end])
    overlap_tokens: int  # the overlap's sentences/words counted one by one


def token_counter(tokenizer) -> Counter:
    """count_tokens for a Hugging Face tokenizer, without special tokens (a prompt adds those once, not per
    passage). It carries a batch form, `.many(texts)`, that the splitter uses to count many pieces in one call."""

    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: skip the wrapper's per-call cost
    if backend is not None:

        def count(text: str) -> int:
            return len(backend.encode(text, add_special_tokens=False).ids)

        def many(texts: list[str]) -> list[int]:
            return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)] if texts else []

    else:

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        def many(texts: list[str]) -> list[int]:
            return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    count.many = many
    return count


def split_text(text: str, count_tokens: Counter, max_tokens: int, overlap_tokens: int = 0) -> list[str]:
    """`text` cut into passages of at most `max_tokens`, consecutive ones sharing about `overlap_tokens` (at most
    half of max_tokens) of whole sentences or words. A text that fits comes back as [text], unchanged."""
    return [text[s.start : s.end] for s in split_spans(text, count_tokens, max_tokens, overlap_tokens)]


def split_spans(text: str, count_tokens: Counter, max_tokens: int, overlap_tokens: int = 0) -> list[Span]:
    """split_text's passages as offsets, telling the overlap from the new text."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise UserError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if isinstance(overlap_tokens, bool) or not isinstance(overlap_tokens, int) or overlap_tokens < 0:
        raise UserError(f"overlap_tokens must be a non-negative integer, got {overlap_tokens!r}")
    start, end = _strip(text, 0, len(text))
    if start == end:  # only whitespace: nothing to keep unless it fits as it is
        n = count_tokens(text)
        return [Span(0, 0, len(text), n, 0)] if n <= max_tokens else []
    pieces: list[tuple[int, int, int]] = []
    _pieces(text, start, end, 0, count_tokens, max_tokens, pieces)
    # Counting the whole text is one more pass; skip it when the pieces alone are far over (pieces counted apart
    # never come to twice the whole in practice).
    if sum(n for _, _, n in pieces) <= 2 * max_tokens:
        whole = count_tokens(text)
        if whole <= max_tokens:
            return [Span(0, 0, len(text), whole, 0)]
    return _pack(text, pieces, count_tokens, max_tokens, min(overlap_tokens, max_tokens // 2))


def _pack(text, pieces, count, max_tokens, overlap) -> list[Span]:
    spans: list[Span] = []
    slack = 0  # the most tightening a passage has needed so far: reserved up front, so few are counted twice
    i = 0
    while i < len(pieces):
        ov_start, ov_tokens = None, 0
        if spans:
            prev = spans[-1]
            density = prev.tokens / max(1, prev.end - prev.start)
            ov_start, ov_tokens = _tail(text, prev.body_start, prev.end, overlap, count, density)
        budget = max_tokens - slack
        while True:
            j, total = i, ov_tokens
            while j < len(pieces) and total + pieces[j][2] <= budget:
                total += pieces[j][2]
                j += 1
            if j == i:
                if ov_start is not None:  # the next piece does not fit beside the overlap: give the overlap up
                    ov_start, ov_tokens = None, 0
                    continue
                j = i + 1  # alone, a piece fits: it was cut to
            start = pieces[i][0] if ov_start is None else ov_start
            actual = count(text[start : pieces[j - 1][1]])
            if actual <= max_tokens:
                break
            budget -= actual - max_tokens  # strictly tighter, so this ends at a lone piece at worst
        # A quarter at most: one odd passage (a forced lone piece) must not shrink all the others.
        slack = min(max(slack, max_tokens - budget), max_tokens // 4)
        spans.append(Span(start, pieces[i][0], pieces[j - 1][1], actual, ov_tokens if ov_start is not None else 0))
        i = j
    return spans


def _pieces(text, start, end, level, count, max_tokens, out) -> None:
    """Append (start, end, tokens) of consecutive pieces of text[start:end], each within max_tokens."""
    spans = _split(text, start, end, _LEVELS[level])
    for (s, e), n in zip(spans, _count_all(count, [text[s:e] for s, e in spans])):
        if n <= max_tokens:
            out.append((s, e, n))
        elif level + 1 < len(_LEVELS):
            _pieces(text, s, e, level + 1, count, max_tokens, out)
        else:
            _characters(text, s, e, n, count, max_tokens, out)


def _characters(text, start, end, tokens, count, max_tokens, out) -> None:
    """A single word over max_tokens: cut it into chunks of characters, each guessed from the word's density."""
    pos = start
    while pos < end:
        size = max(1, min(end - pos, (end - start) * max_tokens // tokens))
        n = count(text[pos : pos + size])
        while n > max_tokens:
            if size == 1:
                raise UserError(f"max_tokens={max_tokens} is less than the {n} tokens of the character {text[pos]!r}")
            size = max(1, min(size - 1, size * max_tokens // n))
            n = count(text[pos : pos + size])
        out.append((pos, pos + size, n))
        pos += size


def _tail(text, start, end, budget, count, density) -> tuple[int | None, int]:
    """The start of the longest run of whole sentences ending at `end` whose counts sum within `budget` -- or, when
    the last sentence alone is over, of whole words of it -- and their summed count; (None, 0) if nothing fits.
    `density` (tokens per character) guesses how many spans to count at once: usually a single call."""
    if budget <= 0:
        return None, 0
    for boundary in (_SENTENCES, _WORDS):
        spans = _split(text, start, end, boundary)
        first, total, k = None, 0, len(spans)
        while k > 0:  # counted from the end only as far as the budget reaches
            j, guess = k, 0.0
            while j > 0 and guess <= 1.5 * (budget - total) + 1:
                j -= 1
                guess += (spans[j][1] - spans[j][0]) * density
            batch = spans[j:k]
            over = False
            for (s, e), n in zip(reversed(batch), reversed(_count_all(count, [text[s:e] for s, e in batch]))):
                if total + n > budget:
                    over = True
                    break
                first, total = s, total + n
            if over:
                break
            k = j
        if first is not None:
            return first, total
        start = spans[-1][0]  # the last sentence is too long: look at its words
    return None, 0


def _split(text, start, end, boundary) -> list[tuple[int, int]]:
    """Non-empty, whitespace-trimmed spans of text[start:end] between `boundary` matches."""
    out, pos = [], start
    for m in boundary.finditer(text, start, end):
        if m.start() > pos:
            out.append(_strip(text, pos, m.start()))
        pos = m.end()
    if end > pos:
        out.append(_strip(text, pos, end))
    return [(s, e) for s, e in out if e > s]


def _strip(text, start, end) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _count_all(count, texts: list[str]) -> list[int]:
    many = getattr(count, "many", None)
    return list(many(texts)) if many is not None else [count(t) for t in texts]


# ------------------------------------------------------------------------------------------------- documents
@dataclass
class PassagePlan:
    """A document cut into passages. The questions stay with `document`: a question may need any passage."""

    document: Document
    passages: list[Document]  # ids "<doc id>#p<k>", the document's title, no questions
    tokens: list[int] = field(default_factory=list)  # per passage, counted whole
    overlap_tokens: list[int] = field(default_factory=list)  # per passage (0 for the first)

    @property
    def split(self) -> bool:
        return len(self.passages) > 1

    def stats(self) -> dict:
        """JSON-able, for the run's records."""
        return {
            "document": self.document.id,
            "passages": len(self.passages),
            "tokens": list(self.tokens),
            "overlap_tokens": list(self.overlap_tokens),
        }


def plan_document(doc: Document, count_tokens: Counter, max_tokens: int, overlap_tokens: int = 0) -> PassagePlan:
    spans = split_spans(doc.text, count_tokens, max_tokens, overlap_tokens)
    passages = [Document(f"{doc.id}#p{k}", doc.title, doc.text[s.start : s.end]) for k, s in enumerate(spans)]
    return PassagePlan(doc, passages, [s.tokens for s in spans], [s.overlap_tokens for s in spans])

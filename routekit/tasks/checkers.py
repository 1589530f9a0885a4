"""Answer checkers: exact match after normalisation, a format-tolerant extractor, and a
lenient checker for answers written as sentences ("The capital of France is Paris.").

A checker is a callable ``(completion, reference) -> bool``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable

Checker = Callable[[str, str], bool]

_PUNCT = str.maketrans("", "", string.punctuation.replace("-", "").replace(".", ""))
_NUM = re.compile(r"-?\d+(?:\.\d+)?")
# Lead-ins that precede an answer in the world's formats and in common chat formats.
_LEAD_INS = re.compile(
    r"^(?:\s*(?:=>|->|=|:|####|(?:a|answer|result):|(?:the answer is|answer is|it is|is)\b))+\s*",
    re.IGNORECASE,
)


def normalize(text: str) -> str:
    """Lowercase, keep the first line, drop most punctuation, collapse whitespace."""
    text = text.strip().split("\n", 1)[0] if text.strip() else ""
    text = text.lower().translate(_PUNCT)
    text = " ".join(text.split())
    return text.rstrip(".").strip()


def exact_match(completion: str, reference: str) -> bool:
    """The completion's first line equals the reference after :func:`normalize`."""
    return normalize(completion) == normalize(reference)


def extract_answer(completion: str) -> str:
    """The answer part of a completion: first line, with lead-ins such as '= ' or 'A:' removed.

    For GSM8K-style completions ("... #### 42") the text after the last '####' is taken.
    """
    text = completion.strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    text = text.split("\n", 1)[0] if text else ""
    text = _LEAD_INS.sub("", text)
    return text.strip().rstrip(".").strip()


def _as_number(s: str) -> float | None:
    m = _NUM.fullmatch(s.replace(",", "").strip())
    return float(m.group()) if m else None


def answer_match(completion: str, reference: str) -> bool:
    """Format-tolerant check: the extracted answer equals the reference.

    Numbers compare by value ("055" == "55", "1,000" == "1000"); a numeric reference also
    matches the last number of the answer line ("so it is 55"). Text compares after
    :func:`normalize`.
    """
    ans = extract_answer(completion)
    ref = extract_answer(reference)
    ref_num = _as_number(ref)
    if ref_num is not None:
        nums = _NUM.findall(ans.replace(",", ""))
        return bool(nums) and float(nums[-1]) == ref_num
    return normalize(ans) == normalize(ref)


# Words whose period does not end a sentence ("Dr. Smith", "St. Louis", "e.g. this"); "No."
# does not either when a number follows ("No. 5").
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st mt ft jr sr vs etc eg ie al approx ca cf fig jan feb mar apr jun "
    "jul aug sep sept oct nov dec".split()
)
# A sentence ends at . ! or ? (with any closing quotes or brackets) before whitespace or the end.
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
# A number standing alone (not inside a word such as "H2O"): sign, thousands groups, decimals.
_SENTENCE_NUM = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?")


def _ends_sentence(text: str, end: re.Match[str]) -> bool:
    """Whether the terminator ``end`` in ``text`` really ends a sentence.

    A period does not when it closes an abbreviation ("Dr.", "e.g.") or an initial ("J. K.
    Rowling"), or when a lowercase word follows ("approx. 7 days", "the U.S. capital"). A
    dotted acronym before a capitalised word ends one ("... in Washington, D.C. It was").
    """
    if end.group()[0] != "." or end.group().startswith(".."):
        return True
    word = re.search(r"([\w.]+)\.$", text[: end.start() + 1])
    token = word.group(1).lower() if word else ""
    rest = text[end.end() :].lstrip()
    if token.replace(".", "") in _ABBREVIATIONS or (token == "no" and rest[:1].isdigit()):
        return False
    if len(token) == 1 and token.isalpha() and word and word.group(1).isupper():
        return False  # an initial: "J. K. Rowling"
    return not rest[:1].islower()


def first_sentence(completion: str) -> str:
    """The completion's first sentence: up to the first ., ! or ? that ends a sentence, or the
    first line break, whichever comes first.

    A decimal point ("3.5") never ends a sentence (no space follows it), nor do the periods of
    abbreviations and initials ("Dr.", "J. K."), nor any period before a lowercase word ("the
    U.S. capital"). A line that ends in
    a colon continues on the next line ("The answer is:\\n42").
    """
    lines = [ln.strip() for ln in completion.strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    i = 1
    while text.endswith(":") and i < len(lines):
        text = f"{text} {lines[i]}"
        i += 1
    for end in _SENTENCE_END.finditer(text):
        if _ends_sentence(text, end):
            return text[: end.end()].strip()
    return text


def _words(text: str) -> str:
    """Casefold, drop accents and apostrophes, turn other punctuation into spaces, and collapse
    whitespace, so that a phrase can be found as whole words: ``" paris "``."""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"['\u2019]", "", text)
    text = "".join(c if c.isalnum() else " " for c in text)
    return " ".join(text.split())


def _reference_number(reference: str) -> float | None:
    """The value of a reference that is a number ("42", "-3", "1,000", "3.5"), else None."""
    m = re.fullmatch(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\d+(?:\.\d+)?", reference.strip().rstrip("."))
    return float(m.group().replace(",", "")) if m else None


def sentence_match(completion: str, reference: str) -> bool:
    """Lenient check for answers in sentences: the reference is in the first sentence.

    A text reference must appear there as whole words, ignoring case, accents and punctuation:
    "The capital of France is Paris." matches "Paris"; "Parisian food." does not, and neither
    does an answer that only a second sentence gives. A numeric reference is compared by value
    with the last number of the first sentence: "2+3 is 5." matches "5", "The answer is 42."
    matches "42.0", "41 comes before 43." does not match "41".
    """
    sentence = first_sentence(completion)
    ref_num = _reference_number(reference)
    if ref_num is not None:
        nums = _SENTENCE_NUM.findall(sentence)
        return bool(nums) and float(nums[-1].replace(",", "")) == ref_num
    ref = _words(reference)
    return bool(ref) and f" {ref} " in f" {_words(sentence)} "


CHECKERS: dict[str, Checker] = {
    "exact": exact_match,
    "answer": answer_match,
    "sentence": sentence_match,
}

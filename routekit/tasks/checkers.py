"""Answer checkers: exact match after normalisation, and a format-tolerant extractor.

A checker is a callable ``(completion, reference) -> bool``.
"""

from __future__ import annotations

import re
import string
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


CHECKERS: dict[str, Checker] = {"exact": exact_match, "answer": answer_match}

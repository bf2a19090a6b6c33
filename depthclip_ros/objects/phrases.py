"""Target noun phrase of a referring expression.

Zero-shot referring segmentation (Yu et al., CVPR 2023) mixes the CLIP text embedding of
a referring expression ("the red chair next to the door") with that of its *target noun
phrase* ("the red chair"). Two extractors are offered:

spaCy (``parser='spacy'``)
    Parse the sentence and take its root (the token that is its own head). If the root
    lies inside one of ``doc.noun_chunks`` the phrase is that chunk; otherwise, if the
    root's first child lies inside a chunk, that chunk; otherwise the whole sentence.
    Needs spaCy and an installed English pipeline (``en_core_web_sm``, ``_md``, ``_lg`` or
    ``_trf``, tried in that order); nothing is ever downloaded at run time. spaCy is
    imported on first use only, and the pipeline is loaded once per process.

rules (``parser='rules'``, :func:`rule_noun_phrase`)
    A deterministic heuristic, not a parser. The sentence is split into words and
    punctuation, and the phrase runs from the first word up to (not including) the first
    token that begins a post-modifier of the head noun:

    * a preposition or spatial word (``in``, ``on``, ``of``, ``with``, ``behind``, ...),
      anywhere; a relation lead-in (``next``, ``left``, ``right``, ``closest``,
      ``directly``, ...) when the next word is a preposition or another such lead-in
      (``next to``, ``left of``, ``right next to``);
    * after a head candidate (a word that is not a determiner, number or ordinal): a
      relative pronoun (``who``, ``that``, ``which``, ``whose``, ``where``), a verb from a
      small list (``is``, ``are``, ``has``, ``sits``, ...), an ``-ing`` word that is not a
      known ``-ing`` noun (``holding``, ``wearing``; but ``building``, ``dining``), a
      past participle from a small list (``dressed``, ``covered``, ``parked``, ...), or
      ``and``/``or``/``&`` (except between two colours: ``black and white dog``);
    * after the first word: a comma, semicolon, colon, full stop, ``?``, ``!``, a
      bracket or a free-standing dash.

    Leading determiners and adjectives are kept ("the red chair", "left person", "the
    second car"), and the output is a slice of the original string, so spelling and case
    are preserved. If no word other than a determiner is left (the expression starts with
    a preposition: "on the left"), the whole sentence is returned, as the spaCy rule does
    when the root is in no chunk.

    Limits: it knows only its word lists. An adjective that is an unlisted ``-ing`` or
    listed ``-ed`` word after another adjective ends the phrase ("the red standing man"
    gives "the red"); a noun that is also a listed verb or preposition ends it too;
    coordination keeps only the first conjunct ("man and woman" gives "man"); and a
    sentence that does not start with its target ("on the left, the man in red") gives
    the whole sentence where spaCy might find "the man".
"""

from __future__ import annotations

from dataclasses import dataclass
import importlib
import re
import threading
from typing import Any, Iterable

__all__ = [
    'SPACY_PIPELINES',
    'noun_phrase',
    'rule_noun_phrase',
    'select_noun_phrase',
    'which_parser',
]

SPACY_PIPELINES: tuple[str, ...] = (
    'en_core_web_sm',
    'en_core_web_md',
    'en_core_web_lg',
    'en_core_web_trf',
)
PARSERS = ('auto', 'spacy', 'rules')

# --------------------------------------------------------------------------- word lists

_DETERMINERS = frozenset(
    'a an the this that these those my your his her its our their some any each every no '
    'another both all either neither'.split()
)
_NUMBERS = frozenset(
    'one two three four five six seven eight nine ten eleven twelve first second third '
    'fourth fifth sixth seventh eighth ninth tenth last'.split()
)
_PREPOSITIONS = frozenset(
    'about above across after against along alongside amid among amongst around at atop '
    'before behind below beneath beside besides between beyond by during except for from '
    'in inside into like near of off on onto opposite outside over through throughout to '
    'toward towards under underneath unlike upon versus via vs with within without'.split()
)
# Words that start a spatial relation when followed by a preposition (or another of
# these): "next to", "left of", "closest to", "right next to", "directly behind".
_RELATION_LEADS = frozenset(
    'next left right close closer closest near nearer nearest far farther farthest further '
    'furthest adjacent ahead out away apart across directly just immediately slightly '
    'partially partly mostly up down'.split()
)
_RELATIVE_PRONOUNS = frozenset('who whom whose that which where'.split())
_VERBS = frozenset(
    'is are was were be been am has have had does do did can could will would may might '
    'sits sit stands stand holds hold wears wear looks look faces face appears appear '
    'seems seem lies lie'.split()
)
_PARTICIPLES = frozenset(
    'dressed covered parked filled topped stacked placed seated stuffed made painted '
    'wrapped attached surrounded shown seen hidden cut sliced loaded leaned propped '
    'tied decorated labeled labelled marked stuck located positioned cropped blocked '
    'obscured'.split()
)
# -ing words that are nouns or noun modifiers, not participles.
_ING_NOUNS = frozenset(
    'thing something nothing anything everything building ceiling painting clothing '
    'string spring swing sling ring king wing evening morning pudding icing frosting '
    'topping stuffing filling railing awning bedding siding wedding sibling ding '
    'dining living sleeping bowling parking swimming washing frying cutting ironing '
    'baking serving drawing carving shopping boxing crossing landing opening'.split()
)
_CONJUNCTIONS = frozenset({'and', 'or', '&'})
_COLOURS = frozenset(
    'black white red green blue yellow orange purple pink brown gray grey silver gold '
    'beige tan dark light'.split()
)
_BREAKS = frozenset(',;:.!?()[]{}') | {'-', '--', '\u2013', '\u2014'}

# A word: letters/digits with inner apostrophes or hyphens ("man's", "t-shirt");
# anything else that is not a space is one punctuation token.
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*|-+|[^\w\s]")


@dataclass(frozen=True)
class _Token:
    """A word or punctuation mark of the sentence with its character span."""

    text: str
    start: int
    end: int

    @property
    def is_word(self) -> bool:
        return self.text[0].isalnum()

    @property
    def base(self) -> str:
        """Lower-case word without a clitic: "That's" -> "that", "man's" -> "man"."""
        return re.split(r"['\u2019]", self.text.lower(), maxsplit=1)[0]


def _tokenize(sentence: str) -> list[_Token]:
    return [_Token(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(sentence)]


def _is_head_candidate(token: _Token) -> bool:
    """A word that can be (or follow) the head noun: not a determiner, number or ordinal."""
    return (token.is_word and token.base not in _DETERMINERS and token.base not in _NUMBERS
            and not token.base.isdigit())


def _is_ing_participle(word: str) -> bool:
    return len(word) >= 5 and word.endswith('ing') and word not in _ING_NOUNS


def _leads_relation(tokens: list[_Token], i: int) -> bool:
    """Whether tokens[i] is a relation lead-in followed by a preposition, possibly through a
    chain of lead-ins ("right next to")."""
    while i < len(tokens) and tokens[i].is_word and tokens[i].base in _RELATION_LEADS:
        i += 1
        if i < len(tokens) and tokens[i].is_word and tokens[i].base in _PREPOSITIONS:
            return True
    return False


def _is_colour_pair(tokens: list[_Token], i: int) -> bool:
    """Whether the conjunction at tokens[i] joins two colours ("black and white")."""
    return (0 < i < len(tokens) - 1 and tokens[i - 1].base in _COLOURS
            and tokens[i + 1].base in _COLOURS)


def _starts_modifier(tokens: list[_Token], i: int, head_seen: bool) -> bool:
    """Whether tokens[i] begins a post-modifier of the phrase kept so far."""
    token = tokens[i]
    word = token.base
    if not token.is_word:
        return token.text in _BREAKS or (head_seen and token.text in _CONJUNCTIONS
                                         and not _is_colour_pair(tokens, i))
    if word in _PREPOSITIONS or _leads_relation(tokens, i):
        return True
    if not head_seen:
        return False
    if word in _CONJUNCTIONS:
        return not _is_colour_pair(tokens, i)
    return (word in _RELATIVE_PRONOUNS or word in _VERBS or word in _PARTICIPLES
            or _is_ing_participle(word))


def rule_noun_phrase(sentence: str) -> str:
    """Target noun phrase of a referring expression by the word-list rule of the module
    docstring: "man in blue shirt" -> "man", "the red chair next to the door" -> "the red
    chair". Returns a slice of ``sentence`` (stripped); the whole stripped sentence if no
    phrase is found. Raises ``ValueError`` for an empty or whitespace-only sentence."""
    text = _checked(sentence)
    tokens = _tokenize(text)
    first = next((i for i, t in enumerate(tokens) if t.is_word), None)
    if first is None:
        return text
    end = first
    head_seen = False
    for i in range(first, len(tokens)):
        if _starts_modifier(tokens, i, head_seen):
            break
        if tokens[i].is_word:
            end = i + 1
        head_seen = head_seen or _is_head_candidate(tokens[i])
    kept = tokens[first:end]
    if not any(t.is_word and t.base not in _DETERMINERS for t in kept):
        return text
    return text[kept[0].start:kept[-1].end]


# --------------------------------------------------------------------------- spaCy


def select_noun_phrase(doc: Any) -> str:
    """The spaCy rule on a parsed ``doc``: the noun chunk holding the root; else the chunk
    holding the root's first child; else the whole text.

    ``doc`` needs only: iteration over tokens (each with ``.i``, ``.head``, ``.children``),
    ``.noun_chunks`` (spans with ``.start``, ``.end``, ``.text``) and ``.text``. The root is
    the first token whose head is itself (compared by index: spaCy makes a new ``Token``
    object on every access).
    """
    chunks = list(doc.noun_chunks)
    root = next((token for token in doc if token.head.i == token.i), None)
    if root is not None:
        chunk = _chunk_of(root.i, chunks)
        if chunk is None:
            child = next(iter(root.children), None)
            chunk = _chunk_of(child.i, chunks) if child is not None else None
        if chunk is not None:
            return str(chunk.text).strip()
    return str(doc.text).strip()


def _chunk_of(index: int, chunks: Iterable[Any]) -> Any | None:
    """The first chunk whose token span [start, end) holds token ``index``."""
    return next((c for c in chunks if c.start <= index < c.end), None)


class _SpacyCache:
    """The pipeline loaded once per process, or why none could be."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.name: str | None = None
        self.nlp: Any = None
        self.error: str | None = None


_CACHE = _SpacyCache()

_INSTALL_HINT = ('install spaCy and an English pipeline, e.g. `pip install spacy` and '
                 '`python -m spacy download en_core_web_sm` (or the en_core_web_sm wheel '
                 'for offline machines)')


def _load_spacy() -> tuple[str, Any]:
    """(pipeline name, nlp), loaded on first call and cached; ``RuntimeError`` (also
    cached) if spaCy or every English pipeline in ``SPACY_PIPELINES`` is missing."""
    cache = _CACHE
    with cache.lock:
        if cache.nlp is None and cache.error is None:
            try:
                cache.name, cache.nlp = _first_pipeline()
            except RuntimeError as error:
                cache.error = str(error)
        if cache.error is not None:
            raise RuntimeError(cache.error)
        assert cache.name is not None
        return cache.name, cache.nlp


def _first_pipeline() -> tuple[str, Any]:
    try:
        spacy = importlib.import_module('spacy')
    except ImportError as error:
        raise RuntimeError(f'spaCy is not installed ({error}); {_INSTALL_HINT}') from None
    problems = []
    for name in SPACY_PIPELINES:
        try:  # a package name: spacy.load never downloads
            return name, spacy.load(name)
        except (OSError, ImportError, ValueError) as error:
            problems.append(f'{name}: {type(error).__name__}')
    raise RuntimeError(f'spaCy has no English pipeline installed (tried '
                       f'{", ".join(problems)}); {_INSTALL_HINT}')


def _spacy_available() -> bool:
    try:
        _load_spacy()
    except RuntimeError:
        return False
    return True


# --------------------------------------------------------------------------- public


def _checked(sentence: str) -> str:
    if not isinstance(sentence, str):
        raise TypeError(f'sentence must be a str, not {type(sentence).__name__}')
    text = sentence.strip()
    if not text:
        raise ValueError('empty referring expression')
    return text


def noun_phrase(sentence: str, parser: str = 'auto') -> str:
    """Target noun phrase of ``sentence``, stripped.

    ``parser``: ``'spacy'`` (the authors' rule on a spaCy parse; ``RuntimeError`` naming
    what to install if spaCy or an English pipeline is missing), ``'rules'``
    (:func:`rule_noun_phrase`) or ``'auto'`` (spaCy when it loads offline, else rules).
    Raises ``ValueError`` for an empty or whitespace-only sentence or an unknown parser.
    """
    if parser not in PARSERS:
        raise ValueError(f'parser must be one of {", ".join(PARSERS)}, not {parser!r}')
    text = _checked(sentence)
    if parser == 'rules' or (parser == 'auto' and not _spacy_available()):
        return rule_noun_phrase(text)
    _, nlp = _load_spacy()
    return select_noun_phrase(nlp(text)) or text


def which_parser() -> str:
    """What ``noun_phrase(..., parser='auto')`` uses: ``'spacy:<pipeline>'`` or
    ``'rules'``."""
    if _spacy_available():
        return f'spacy:{_load_spacy()[0]}'
    return 'rules'

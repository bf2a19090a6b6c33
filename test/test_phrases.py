"""Target noun phrase of a referring expression: the rule-based extractor on a RefCOCO-style
table, the parser switch, and the spaCy root/chunk selection on a fake parse (spaCy itself
is not needed: its absence is simulated either way)."""

from __future__ import annotations

from dataclasses import dataclass, field
import subprocess
import sys
import types

import pytest

from depthclip_ros.objects import phrases
from depthclip_ros.objects.phrases import (
    noun_phrase,
    rule_noun_phrase,
    select_noun_phrase,
    which_parser,
)

RULE_CASES = [
    # the examples of the brief
    ('man in blue shirt', 'man'),
    ('the red chair next to the door', 'the red chair'),
    ('woman holding an umbrella', 'woman'),
    ('left person', 'left person'),
    ('guy wearing red hat', 'guy'),
    ('bowl of soup on the table', 'bowl'),
    ('the player who is jumping', 'the player'),
    ('car parked behind the truck', 'car'),
    ('chair', 'chair'),
    ('on the left', 'on the left'),
    # prepositions and spatial relations
    ('Guy in front of the tree', 'Guy'),
    ('the giraffe near the fence', 'the giraffe'),
    ('bus by the curb', 'bus'),
    ('big elephant under the tree', 'big elephant'),
    ('banana above the apple', 'banana'),
    ('the one between the two cups', 'the one'),
    ('the second car from left', 'the second car'),
    ('the man closest to the camera', 'the man'),
    ('cup right next to the plate', 'cup'),
    ('the cup directly behind the plate', 'the cup'),
    ('that guy on the left', 'that guy'),
    ('far left guy', 'far left guy'),
    ("man's hat on the left", "man's hat"),
    ('t-shirt with logo', 't-shirt'),
    ('back of the bus', 'back'),
    # relative clauses, verbs, participles
    ("guy that's smiling", 'guy'),
    ('person whose shirt is red', 'person'),
    ('elephant is eating', 'elephant'),
    ('kid sitting on the bench', 'kid'),
    ('dog lying on the bed', 'dog'),
    ('zebra facing left', 'zebra'),
    ('girl dressed in pink', 'girl'),
    ('pizza covered with cheese', 'pizza'),
    ('two men sitting', 'two men'),
    # adjectives, -ing nouns and ordinals before the head stay
    ('the standing man', 'the standing man'),
    ('white building behind the bus', 'white building'),
    ('the wooden dining table', 'the wooden dining table'),
    ('a white thing', 'a white thing'),
    ('the 2nd car', 'the 2nd car'),
    ('the second from left', 'the second'),
    # coordination
    ('man and woman', 'man'),
    ('cup or glass', 'cup'),
    ('black and white dog on the couch', 'black and white dog'),
    # case, punctuation and spaces
    ('MAN IN BLUE SHIRT', 'MAN'),
    ('The Red Chair, next to the door.', 'The Red Chair'),
    ('  man   in   blue  ', 'man'),
    ('\tthe  tall   woman \n', 'the  tall   woman'),
    ('sandwich; half eaten', 'sandwich'),
    ('dog (brown)', 'dog'),
    ('bus - far right', 'bus'),
    ('"man in red"', 'man'),
    ('...man', 'man'),
    ('chair.', 'chair'),
    # no head before a relation: the whole sentence, as the authors do
    ('left of the tree', 'left of the tree'),
    ('next to the door', 'next to the door'),
    ('  In front, the car  ', 'In front, the car'),
    ('the', 'the'),
    ('?!', '?!'),
]


@pytest.mark.parametrize('sentence, expected', RULE_CASES)
def test_rule_noun_phrase(sentence, expected):
    assert rule_noun_phrase(sentence) == expected


@pytest.mark.parametrize('sentence', ['', ' ', '\t\n  '])
@pytest.mark.parametrize('parser', ['auto', 'spacy', 'rules'])
def test_empty_sentence_raises_value_error(sentence, parser):
    with pytest.raises(ValueError, match='empty'):
        noun_phrase(sentence, parser=parser)
    with pytest.raises(ValueError, match='empty'):
        rule_noun_phrase(sentence)


def test_unknown_parser_raises_value_error():
    with pytest.raises(ValueError, match='auto, spacy, rules'):
        noun_phrase('man in blue', parser='nltk')


def test_the_rules_parser_is_rule_noun_phrase():
    """noun_phrase(parser='rules') hands the stripped sentence to rule_noun_phrase, whose
    cases are the table above."""
    for sentence, expected in (('man in blue shirt', 'man'), ('  on the left \n', 'on the left')):
        assert noun_phrase(sentence, parser='rules') == expected


def test_import_is_lazy():
    code = ('import sys, depthclip_ros.objects.phrases; '
            'sys.exit(1 if "spacy" in sys.modules else 0)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- spaCy absent


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty pipeline cache, so that each test loads (or fails to load) anew."""
    monkeypatch.setattr(phrases, '_CACHE', phrases._SpacyCache())


@pytest.fixture
def no_spacy(monkeypatch, fresh_cache):
    """spaCy cannot be imported, whether or not it is installed."""
    monkeypatch.setitem(sys.modules, 'spacy', None)


@pytest.fixture
def spacy_without_pipelines(monkeypatch, fresh_cache):
    """spaCy imports but no English pipeline is installed."""
    tried = []

    def load(name):
        tried.append(name)
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setitem(sys.modules, 'spacy', types.SimpleNamespace(load=load))
    return tried


def test_spacy_parser_without_spacy_says_what_to_install(no_spacy):
    with pytest.raises(RuntimeError, match='spaCy is not installed') as caught:
        noun_phrase('man in blue shirt', parser='spacy')
    assert 'pip install spacy' in str(caught.value)
    assert 'en_core_web_sm' in str(caught.value)


def test_spacy_parser_without_pipeline_names_the_ones_tried(spacy_without_pipelines):
    with pytest.raises(RuntimeError, match='no English pipeline') as caught:
        noun_phrase('man in blue shirt', parser='spacy')
    assert spacy_without_pipelines == list(phrases.SPACY_PIPELINES)
    for name in phrases.SPACY_PIPELINES:
        assert name in str(caught.value)
    # the failure is cached: no second round of loads
    with pytest.raises(RuntimeError):
        noun_phrase('man in blue shirt', parser='spacy')
    assert len(spacy_without_pipelines) == len(phrases.SPACY_PIPELINES)


@pytest.mark.parametrize('absence', ['no_spacy', 'spacy_without_pipelines'])
def test_auto_falls_back_to_rules(absence, request):
    request.getfixturevalue(absence)
    assert which_parser() == 'rules'
    assert noun_phrase('woman holding an umbrella') == 'woman'
    assert noun_phrase('woman holding an umbrella', parser='auto') == 'woman'


# --------------------------------------------------------------------------- fake parses


@dataclass(eq=False)
class FakeToken:
    i: int
    text: str
    head: FakeToken | None = None
    children: list[FakeToken] = field(default_factory=list)


@dataclass
class FakeSpan:
    start: int
    end: int
    text: str


class FakeDoc:
    """What select_noun_phrase reads of a spaCy Doc: tokens, noun_chunks and text."""

    def __init__(self, text: str, heads: list[int], chunks: list[tuple[int, int]]):
        words = text.split()
        self.text = text
        self.tokens = [FakeToken(i, word) for i, word in enumerate(words)]
        for token, head in zip(self.tokens, heads):
            token.head = self.tokens[head]
            if head != token.i:
                self.tokens[head].children.append(token)
        self.noun_chunks = [FakeSpan(s, e, ' '.join(words[s:e])) for s, e in chunks]

    def __iter__(self):
        return iter(self.tokens)


# sentence, head index of every word, noun chunks as token spans, expected phrase
FAKE_PARSES = {
    'root in a chunk': (
        'the red chair next to the door',
        [2, 2, 2, 2, 3, 6, 4], [(0, 3), (5, 7)], 'the red chair'),
    # a verb root ("standing") whose first child is the subject chunk
    "root's first child in a chunk": (
        'man standing on the left',
        [1, 1, 1, 4, 2], [(0, 1), (3, 5)], 'man'),
    # the first child is what counts, not a later one in another chunk
    'first child only': (
        'near the man the dog',
        [0, 2, 0, 4, 0], [(1, 3), (3, 5)], 'the man'),
    'neither: whole sentence': (
        'on the left',
        [0, 2, 0], [], 'on the left'),
    'root without children: whole sentence': (
        'hello there',
        [0, 0], [], 'hello there'),
}


@pytest.mark.parametrize('case', FAKE_PARSES)
def test_select_noun_phrase(case):
    text, heads, chunks, expected = FAKE_PARSES[case]
    assert select_noun_phrase(FakeDoc(text, heads, chunks)) == expected


def test_select_noun_phrase_compares_tokens_by_index():
    # spaCy builds a new Token object on every access: the root is found by index
    doc = FakeDoc('the dog', [1, 1], [(0, 2)])
    doc.tokens[1].head = FakeToken(1, 'dog')
    assert select_noun_phrase(doc) == 'the dog'


@pytest.fixture
def fake_spacy(monkeypatch, fresh_cache):
    """A fake spaCy whose only installed pipeline is en_core_web_md, parsing by the
    FAKE_PARSES table; returns the names spacy.load was asked for."""
    tried = []
    parses = {text: (heads, chunks) for text, heads, chunks, _ in FAKE_PARSES.values()}

    def load(name):
        tried.append(name)
        if name != 'en_core_web_md':
            raise OSError(f"[E050] Can't find model '{name}'")
        return lambda text: FakeDoc(text, *parses[text])

    monkeypatch.setitem(sys.modules, 'spacy', types.SimpleNamespace(load=load))
    return tried


@pytest.mark.parametrize('parser', ['spacy', 'auto'])
def test_spacy_path_uses_the_parse(fake_spacy, parser):
    """The stripped sentence is parsed and select_noun_phrase (its cases above) decides."""
    for case in ('root in a chunk', 'neither: whole sentence'):
        text, _, _, expected = FAKE_PARSES[case]
        assert noun_phrase(f'  {text} ', parser=parser) == expected


def test_spacy_pipeline_is_looked_up_in_order_and_loaded_once(fake_spacy):
    assert which_parser() == 'spacy:en_core_web_md'
    noun_phrase('man standing on the left', parser='spacy')
    noun_phrase('on the left')
    assert fake_spacy == ['en_core_web_sm', 'en_core_web_md']
    # the rules stay available beside spaCy
    assert noun_phrase('on the left', parser='rules') == 'on the left'

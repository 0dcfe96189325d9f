from dataclasses import dataclass

import spacy

from spacy_padellm.align import align_mentions, choose_entities, find_span
from spacy_padellm.dedup import dedup_mentions


@dataclass(frozen=True)
class M:
    label: str
    k: int
    text: str
    logprob: float = -1.0


nlp = spacy.blank("en")


def spans(doc, aligned):
    return [(doc[a.start:a.end].text, a.label) for a in aligned]


def test_repeats_are_found_in_order():
    doc = nlp("Paris is big. Paris , Texas is small. Paris again.")
    aligned, missing = align_mentions(doc, [M("LOC", 1, "Paris"), M("LOC", 2, "Paris"), M("LOC", 3, "Paris")])
    assert [doc[a.start].idx for a in aligned] == [0, 14, 38]
    assert missing == []


def test_a_repeat_the_text_does_not_support_is_kept_once():
    doc = nlp("Only Paris here.")
    aligned, missing = align_mentions(doc, [M("LOC", 1, "Paris"), M("LOC", 2, "Paris")])
    assert spans(doc, aligned) == [("Paris", "LOC")]
    assert [m.k for m in missing] == [2]


def test_casing_falls_back_to_case_insensitive_match():
    doc = nlp("the EUROPEAN UNION met.")
    aligned, _ = align_mentions(doc, [M("ORG", 1, "European Union")])
    assert spans(doc, aligned) == [("EUROPEAN UNION", "ORG")]


def test_exact_case_is_preferred_over_an_earlier_other_case():
    doc = nlp("apple pie and Apple shares")
    aligned, _ = align_mentions(doc, [M("ORG", 1, "Apple")])
    assert spans(doc, aligned) == [("Apple", "ORG")]


def test_unicode_whose_lower_case_changes_length_keeps_offsets():
    # 'İ'.lower() is two code points: aligning on a lower-cased copy would shift every later offset.
    text = "İİİİ İstanbul and ANKARA"
    assert len(text.lower()) != len(text)
    doc = nlp(text)
    aligned, missing = align_mentions(doc, [M("LOC", 1, "Ankara"), M("PER", 1, "İstanbul")])
    assert sorted(spans(doc, aligned)) == [("ANKARA", "LOC"), ("İstanbul", "PER")]
    assert missing == []


def test_strings_not_in_the_text_are_reported_not_lost():
    doc = nlp("Ada met Bob.")
    aligned, missing = align_mentions(doc, [M("PER", 1, "Charles"), M("PER", 2, "  "), M("PER", 3, "Bob")])
    assert spans(doc, aligned) == [("Bob", "PER")]
    assert [m.text for m in missing] == ["Charles", "  "]


def test_whitespace_differences_and_partial_tokens():
    doc = nlp("New   York-based firms")
    start, end, _ = find_span(doc, "New York", 0)
    assert doc[start:end].text == "New   York"
    # a match inside a token expands to the whole token rather than being lost
    start, end, _ = find_span(doc, "York", 0)
    assert doc[start:end].text.startswith("York")


def test_token_aligned_match_is_preferred():
    doc = nlp("Yorkshire and York")
    start, end, _ = find_span(doc, "York", 0)
    assert doc[start:end].text == "York" and start == 2


def test_overlapping_and_nested_candidates_resolve_by_score():
    doc = nlp("Bank of New York Mellon")
    aligned, _ = align_mentions(doc, [M("ORG", 1, "Bank of New York Mellon", -0.5), M("LOC", 1, "New York", -0.1),
                                      M("MISC", 1, "York Mellon", -3.0)])
    assert len(aligned) == 3  # every candidate, nested ones too
    ents = choose_entities(aligned)
    assert spans(doc, ents) == [("New York", "LOC")]
    starts = sorted((a.start, a.end) for a in ents)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(starts, starts[1:]))


def test_dedup_keeps_most_probable_label_tie_goes_to_first_label():
    ms = [M("PER", 1, "Jordan", -2.0), M("LOC", 1, "Jordan", -0.5), M("LOC", 2, "Jordan ", -4.0),
          M("ORG", 1, "Acme", -1.0), M("MISC", 1, "Acme", -1.0), M("PER", 2, "Ada", -9.0)]
    kept, dropped = dedup_mentions(ms, ["PER", "ORG", "LOC", "MISC"])
    assert {(m.label, m.text.strip()) for m in kept} == {("LOC", "Jordan"), ("ORG", "Acme"), ("PER", "Ada")}
    assert len([m for m in kept if m.label == "LOC"]) == 2  # every occurrence under the winner stays
    assert {(m.label, m.text) for m in dropped} == {("PER", "Jordan"), ("MISC", "Acme")}


def test_dedup_is_case_sensitive():
    kept, dropped = dedup_mentions([M("PER", 1, "may", -1.0), M("MISC", 1, "May", -0.1)], ["PER", "MISC"])
    assert len(kept) == 2 and dropped == []


def test_alignment_never_moves_backwards_after_an_unsupported_repeat():
    """Issue 19's case: an extra Toyota used to fall back to the first Toyota and drag the search back, so
    the last Honda landed on the first Honda and the second Honda stayed untagged."""
    doc = nlp("Toyota beat Honda. Later Toyota and Honda met again in Tokyo.")
    said = ["Toyota", "Honda", "Toyota", "Toyota", "Honda"]
    aligned, missing = align_mentions(doc, [M("ORG", k, t) for k, t in enumerate(said, start=1)])
    assert [(doc[a.start:a.end].text, doc[a.start].idx) for a in aligned] == [
        ("Toyota", 0), ("Honda", 12), ("Toyota", 25), ("Honda", 36)]
    assert [m.k for m in missing] == [4]  # only the extra Toyota: no Toyota follows the second one


def test_all_occurrences_tags_every_same_case_token_aligned_occurrence():
    doc = nlp("Orlando City won. Orlando City lost. orlando city fans and Orlando Cityscape.")
    aligned, _ = align_mentions(doc, [M("ORG", 1, "Orlando City")], all_occurrences=True)
    assert [doc[a.start].idx for a in aligned] == [0, 18]  # not the lower-case one, not inside "Cityscape"
    plain, _ = align_mentions(doc, [M("ORG", 1, "Orlando City")])
    assert len(plain) == 1


def test_fuzzed_repeats_align_in_order_and_never_backwards():
    """Random texts of repeated names, random model outputs (true mentions in order, with extra repeats and
    drops): the aligned spans of a label are strictly increasing, each a true occurrence of its string,
    and mentions that match the text's order are all placed."""
    import random

    rng = random.Random(0)
    names = ["Toyota", "Honda", "Tokyo", "Orlando City", "Ford"]
    for _ in range(300):
        words = [rng.choice(names) for _ in range(rng.randint(1, 12))]
        text = " and ".join(words) + " ."
        doc = nlp(text)
        said = [w for w in words if rng.random() > 0.2]
        for _ in range(rng.randint(0, 3)):  # extra repeats the text may not hold
            said.insert(rng.randint(0, len(said)), rng.choice(names))
        aligned, missing = align_mentions(doc, [M("ORG", k, t) for k, t in enumerate(said, start=1)])
        starts = [a.start for a in sorted(aligned, key=lambda a: a.k)]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        assert all(doc[a.start:a.end].text == a.text for a in aligned)
        assert len(aligned) + len(missing) == len(said)
        in_order, _ = align_mentions(doc, [M("ORG", k, t) for k, t in enumerate(words, start=1)])
        assert len(in_order) == len(words)

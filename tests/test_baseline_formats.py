from spacy_padellm.baselines.formats import aug_target, parse_aug, parse_struct, struct_target

LABELS = ["PER", "MISC", "LOC", "ORG"]
TEXT = "Cuttitta scored at the 1995 World Cup in Italy and Smith cheered ."
ENTS = [(0, 8, "PER"), (23, 37, "MISC"), (41, 46, "LOC"), (51, 56, "PER")]


def test_struct_builds_the_papers_format():
    assert struct_target(TEXT, ENTS, LABELS) == (
        "((PER): (Cuttitta), (Smith), (MISC): (1995 World Cup), (LOC): (Italy), (ORG): (NULL))")


def test_struct_round_trip():
    pairs = parse_struct(struct_target(TEXT, ENTS, LABELS), LABELS)
    assert sorted(pairs) == sorted((lab, TEXT[s:e]) for s, e, lab in ENTS)


def test_struct_mentions_with_commas_and_parentheses_survive():
    text = "Washington, D.C. and Foo (UK) Ltd"
    ents = [(0, 16, "LOC"), (21, 33, "ORG")]
    assert parse_struct(struct_target(text, ents, LABELS), LABELS) == [("LOC", "Washington, D.C."),
                                                                        ("ORG", "Foo (UK) Ltd")]


def test_struct_parses_malformed_output_without_raising():
    assert parse_struct("", LABELS) == []
    assert parse_struct("((PER): (Ada), (LOC", LABELS) == [("PER", "Ada")]
    assert parse_struct("((PER): (Ada), (DATE): (1995), (LOC): (NULL))", LABELS) == [("PER", "Ada")]
    assert parse_struct("garbage ((((", LABELS) == []
    assert parse_struct("((PER): (Ada)(ORG): (Acme))", LABELS) == [("PER", "Ada"), ("ORG", "Acme")]


def test_aug_round_trip():
    target = aug_target(TEXT, ENTS)
    assert target == ("[Cuttitta | PER] scored at the [1995 World Cup | MISC] in [Italy | LOC] and "
                      "[Smith | PER] cheered .")
    assert parse_aug(target, LABELS) == [(lab, TEXT[s:e]) for s, e, lab in ENTS]


def test_aug_parses_malformed_output_without_raising():
    assert parse_aug("[Ada | PER] met [Bob | DATE] in [Paris | LOC", LABELS) == [("PER", "Ada")]
    assert parse_aug("[[x | PER]] [ | ORG]", LABELS) == [("PER", "x")]
    assert parse_aug("", LABELS) == []

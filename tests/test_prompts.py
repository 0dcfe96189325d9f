import pytest

from spacy_padellm.errors import PaDeLLMError
from spacy_padellm.prompts import common_prefix_len, encode, get_template, special_prefix, validate_labels


def test_english_template_is_byte_exact():
    t = get_template("en")
    assert t.prompt("EU rejects it", "ORG") == "text:\nEU rejects it\nentity type:\nORG\n\n<num>"
    assert t.mention_prompt("EU rejects it", "ORG", 2, 1) == (
        "text:\nEU rejects it\nentity type:\nORG\n\n<num>2\n<mention 1>")
    assert t.target(2, 2, "EU") == "2\n<mention 2>EU"
    assert t.target(0, 1, "") == "0"


def test_chinese_template_matches_official_code():
    t = get_template("zh")
    assert t.prompt("我爱北京", "地点") == "文本:\n我爱北京\n指定NER标签:\n地点\n\n\u2039数量>"
    assert t.mention_prompt("我爱北京", "地点", 1, 1).endswith("\u2039数量>1\n\u2039第1文段>")


def test_unknown_template_is_a_coded_error():
    with pytest.raises(PaDeLLMError, match=r"\[E006\].*'fr'"):
        get_template("fr")


@pytest.mark.parametrize("labels", [[], ["PER", "PER"], ["PER", ""], ["A\nB"], "PER", None])
def test_bad_labels_are_rejected(labels):
    with pytest.raises(PaDeLLMError, match=r"\[E011\]"):
        validate_labels(labels)


def test_prompt_ids_are_a_prefix_of_mention_prompt_ids(tokenizer):
    """The engine reuses the label row's cache for the mention row: their ids must agree up to the seam."""
    t = get_template("en")
    for text in ["Ada met Bob.", "ends with space ", "Zoë in São Paulo", "x\n\ny"]:
        prompt = encode(tokenizer, t.prompt(text, "PER"), special_prefix(tokenizer))
        full = encode(tokenizer, t.mention_prompt(text, "PER", 3, 2), special_prefix(tokenizer))
        assert common_prefix_len(prompt, full) >= len(prompt) - 1


def test_smollm2_tokenizer_is_fixed(tokenizer):
    """The GGUF conversion names <|im_start|> as EOS and prepends it; our copy must not."""
    assert tokenizer.eos_token == "<|im_end|>"
    assert special_prefix(tokenizer) == []

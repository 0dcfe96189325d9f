"""displaCy label colours for the PaDeLLM-NER labels (CoNLL-style PER, ORG, LOC, MISC).

spaCy collects every dict registered under the ``spacy_displacy_colors`` entry point group
(``registry.displacy_colors``) and merges it over its defaults in ``displacy.render``, so once this
package is installed PER and MISC no longer render in the grey fallback colour. ORG and LOC keep
spaCy's own defaults. Explicit ``options={"colors": ...}`` passed to ``displacy.render`` still win.
"""
from typing import Dict

COLORS: Dict[str, str] = {
    "PER": "#aa9cfc",  # spaCy's PERSON lilac
    "ORG": "#7aecec",  # spaCy default
    "LOC": "#ff9561",  # spaCy default
    "MISC": "#c5e99b",  # soft green, distinct from the ORG cyan, LOC orange and PER lilac
}

__all__ = ["COLORS"]

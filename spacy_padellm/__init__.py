"""spacy_padellm: PaDeLLM-NER (count-then-mention parallel decoding) as a spaCy component.

Importing this package stays light: spaCy, torch and transformers load when a name that needs them is first
used. The `padellm_ner` factory reaches spaCy through the `spacy_factories` entry point, so no import is needed
to register it; `python -m spacy_padellm apply --backend ray` drives a Ray job without loading spaCy in the
driver (the actors load it): the driver's time before work fell from 2.1 to 0.4 s (docs/RAY.md, session 17).
"""
from typing import Any

from .errors import Errors, PaDeLLMError
from .prompts import TEMPLATES, Template, get_template

__version__ = "0.1.0"
__all__ = ["PaDeLLMNER", "make_padellm_ner", "DEFAULT_CONFIG", "Errors", "PaDeLLMError", "TEMPLATES",
           "Template", "get_template", "__version__"]

_FROM_COMPONENT = ("PaDeLLMNER", "make_padellm_ner", "DEFAULT_CONFIG")


def __getattr__(name: str) -> Any:
    """The component's names, imported (with spaCy) on first use (PEP 562)."""
    if name in _FROM_COMPONENT:
        from . import component

        return getattr(component, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

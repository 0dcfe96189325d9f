"""spacy_padellm: PaDeLLM-NER (count-then-mention parallel decoding) as a spaCy component.

Importing this package stays light: torch and transformers load when a model is first used.
"""
from .component import DEFAULT_CONFIG, PaDeLLMNER, make_padellm_ner
from .errors import Errors, PaDeLLMError
from .prompts import TEMPLATES, Template, get_template

__version__ = "0.1.0"
__all__ = ["PaDeLLMNER", "make_padellm_ner", "DEFAULT_CONFIG", "Errors", "PaDeLLMError", "TEMPLATES",
           "Template", "get_template", "__version__"]

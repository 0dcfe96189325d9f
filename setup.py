"""spacy_padellm: PaDeLLM-NER parallel-decoding NER as a spaCy component."""
from setuptools import find_packages, setup

setup(
    name="spacy_padellm",
    version="0.1.0",
    description="Fast LLM named-entity recognition for spaCy: PaDeLLM count-then-mention parallel decoding",
    long_description=open("README.md", encoding="utf8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["spacy_padellm", "spacy_padellm.*"]),
    package_data={"spacy_padellm": ["py.typed", "default_adapter/*", "baseline_adapters/*/*"]},
    python_requires=">=3.10",
    install_requires=[
        "spacy>=3.8,<3.9",
        "spacy-transformers>=1.3,<1.5",
        "thinc>=8.3,<8.4",
        "torch>=2.1",
        "transformers>=4.45,<4.53.3",
        "peft>=0.13",
        "gguf>=0.10",
        "srsly>=2.4",
    ],
    extras_require={"test": ["pytest", "hypothesis"], "ray": ["ray[data]==2.58.0"]},
    entry_points={
        "spacy_factories": ["padellm_ner = spacy_padellm.component:make_padellm_ner"],
        "spacy_displacy_colors": ["spacy_padellm = spacy_padellm.displacy_colors:COLORS"],
        "console_scripts": ["spacy-padellm = spacy_padellm.cli:main"],
    },
)

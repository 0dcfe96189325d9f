"""The model side: loading (packaged SmolLM2, HF folders, .gguf files, peft adapters) and the batched
count-then-mention decoder with a shared-prefix KV cache. torch and transformers are imported here, so
nothing outside this package imports it at module level."""

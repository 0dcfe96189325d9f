"""Training: data readers, PaDeLLM examples, packing, and the LoRA loop."""

"""iVideoGPT: compressive tokenizer + LLaMA transformer world model."""

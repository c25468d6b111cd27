"""The LoRA (LLM fine-tuning) trainer: ``python -m kubetrain.trainer.lora``."""

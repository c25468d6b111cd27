"""The vision-language fine-tuning trainer (``spec.modelType: multimodal``)."""

"""Adapter training: the dataset builder (`dataset`), the objective and its pieces (`lora_train`),
the training run (`trainer`) and their commands (`cli`)."""

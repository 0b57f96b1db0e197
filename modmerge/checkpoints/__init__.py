"""Checkpoint readers, validation and the model-directory writer."""

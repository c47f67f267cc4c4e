"""Built-in models, `ImageClassifier` and datamodules: a convenience, never required by the callbacks."""

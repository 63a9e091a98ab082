"""The pipeline's stages: one module per dvc.yaml stage, read -> pure work -> write and log."""

"""Plain model objects, no Redis: embedders, the fast-path classifier, the transformer fallback, the cascade
policy, calibration, artifacts, training and evaluation."""

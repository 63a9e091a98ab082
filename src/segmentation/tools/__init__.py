"""The make targets that are not stages: score, experiments, checks, set-up."""

"""The make targets that are not stages: score, set-up."""

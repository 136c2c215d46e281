"""DAPO (Yu et al., 2025): ``python -m recipe.dapo.main_dapo``; see README.md."""

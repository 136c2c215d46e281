"""Reproducible algorithms on top of verl (verl's ``recipe/``): ``python -m recipe.<name>.main_<name> key=value ...``."""

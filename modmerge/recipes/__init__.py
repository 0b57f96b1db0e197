"""Recipes: the typed YAML schema and the streaming executor behind `modmerge merge`."""

"""Modular experts (eq. 4): modules built by value from a grouping, cached and shared."""

from modmerge.experts.modules import ExpertBuilder, Module, ModuleKey

__all__ = ["ExpertBuilder", "Module", "ModuleKey"]

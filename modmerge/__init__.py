"""modmerge: fine-grained model merging (MERGE), from checkpoints to routed inference.

The sub-packages follow the data: checkpoints -> components -> merging -> recipes.
"""

__version__ = "0.1.0"

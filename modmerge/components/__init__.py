"""Component decomposition: parameter name -> (layer, kind), from architecture data files."""

"""Reports built from finished runs (curves from TensorBoard event files, tables, figures)."""

"""Studies: spec -> runs -> report."""

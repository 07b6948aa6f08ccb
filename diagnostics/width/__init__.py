"""Width-scaling reports (THEORY §5): sweeps over widths and seeds, figures, and the report."""

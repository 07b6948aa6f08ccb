"""Width-scaling reports (theory/width.md): sweeps over widths and seeds, figures, and the report."""

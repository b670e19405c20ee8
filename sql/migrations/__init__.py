"""Schema migrations, applied in filename order."""

"""SQL shipped inside the wheel as package data (see pyproject's package-dir)."""

"""One gateway per table: every statement on it, typed rows, its SQL in sql/."""

"""More named SQL blocks, one file per area; loaded with sql/queries.sql."""

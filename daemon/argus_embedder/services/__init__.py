"""Background work beside the loop: the lifecycle helper and the periodic tasks."""

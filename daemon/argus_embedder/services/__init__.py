"""Background work beside the loop: the periodic tasks (on `lifecycle.Service`)."""

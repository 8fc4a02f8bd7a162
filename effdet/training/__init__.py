"""Pieces of the training loop, each testable alone; `effdet.tasks.train` assembles them."""

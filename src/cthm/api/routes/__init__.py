"""One module per resource; routes are thin: parse, authorize, call the repository, shape."""

"""Taking objects out of a trained model (``cl-export``): labelled points, their object table, PLY files."""

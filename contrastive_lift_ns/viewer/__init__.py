"""The viewer controls of the clustering."""

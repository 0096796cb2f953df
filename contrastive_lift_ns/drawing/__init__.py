"""Colours and pictures of labels: the fixed palette, colour PNGs, contact sheets."""

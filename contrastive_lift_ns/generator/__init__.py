"""Offline Messy-Rooms-style benchmark scenes: layout, ray casting and a simulated 2D segmenter."""

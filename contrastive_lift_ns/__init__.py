"""Contrastive Lift for nerfstudio: lift view-inconsistent 2D instance masks to one 3D instance field.

Importing the package changes nothing: nerfstudio imports every installed plugin at the start of every command.
The workarounds this plugin needs (``workarounds.py``) apply when one of its models is built.
"""

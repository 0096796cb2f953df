"""The instance losses: contrastive (eq. 3, 4), concentration (eq. 5) and Panoptic Lifting's linear assignment."""

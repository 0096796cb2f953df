"""Named keys of the model's outputs, of the training batches and of the rays' metadata.

Like nerfstudio's ``FieldHeadNames``, one place names every key that more than one module reads or writes.
They are plain strings, so they are also what ``ns-render --rendered-output-names`` and the viewer show.
"""


class Output:
    """Keys of the dictionaries the model returns."""

    SEMANTIC_LOGITS = "semantic_logits"
    """Rendered semantic logits, one per class."""
    EMBEDDING = "embedding"
    """The fast field's rendered instance embedding (slow-fast and vanilla losses): what clustering groups."""
    INSTANCE_LOGITS = "instance_logits"
    """linear-assignment only: rendered logits over the ``max_instances`` object channels."""
    FAST_EMBEDDING = "fast_embedding"
    """Training, slow-fast: embeddings of the instance rays rendered by the fast field."""
    SLOW_EMBEDDING = "slow_embedding"
    """Training, slow-fast: embeddings of the instance rays rendered by the slow field."""
    SEMANTIC_CLASS = "semantic_class"
    """Image: the predicted class id per pixel (float, one channel)."""
    SEMANTICS = "semantics"
    """Image: the predicted class in its palette colour."""
    INSTANCE_ID = "instance_id"
    """Image: the object id per pixel (float, one channel; 0 = no object); once there are objects."""
    INSTANCE = "instance"
    """Image: the object id in its palette colour, the same in every view."""
    EMBEDDING_COLOURS = "instance_embedding"
    """Image: a fixed colour map of the embedding (not a per-frame PCA)."""


class Batch:
    """Keys of the training and evaluation batches, beside nerfstudio's ``image`` and ``indices``."""

    SEGMENTS = "segments"
    """The 2D segmenter's instance id per pixel (0 = no segment); arbitrary per image."""
    SEMANTICS = "semantics"
    """The 2D segmenter's class id per pixel."""
    CONFIDENCE = "confidence"
    """The 2D segmenter's confidence per pixel, in [0, 1]."""
    DEPTH = "depth_image"
    """The capture's depth per pixel, in nerfstudio's scaled units (0 = no measurement), where the frames have
    depth maps; nerfstudio's name, so its depth losses read it."""
    GT_INSTANCE = "gt_instance"
    """Evaluation only: ground-truth instance ids, consistent across views."""
    GT_SEMANTICS = "gt_semantics"
    """Evaluation only: ground-truth class ids."""
    INSTANCE_SEGMENTS = "instance_segments"
    """Training: the 2D segment ids of the instance rays, ``images × rays_per_image``, image by image."""
    INSTANCE_CONFIDENCE = "instance_confidence"
    """Training: the confidence of the instance rays."""
    RAYS_PER_IMAGE = "rays_per_image"
    """Training: how many instance rays each image of the batch contributes."""


class RayMetadata:
    """Keys of ``RayBundle.metadata`` set by the data manager."""

    INSTANCE_RAY = "instance_ray"
    """True for the rays of the instance loss (drawn from segment pixels), False for the RGB and semantic rays."""

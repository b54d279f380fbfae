"""Test and benchmark helpers for the TFDS path on machines without TensorFlow or internet."""

from __future__ import annotations


def write_tfds_dataset(name: str, data_dir: str, splits: dict, num_classes: int) -> str:
    """Write ``splits = {split: (uint8 images [N, H, W, C], int labels [N])}`` as a real TFDS dataset
    (ArrayRecord, PNG-encoded ``image`` + ClassLabel ``label``) that ``tfds.data_source(name,
    data_dir=data_dir)`` reads by name. For tests and benchmarks of the TFDS path on machines without
    TensorFlow: TFDS encodes images with TF, so PIL's PNG encoder stands in while this runs."""
    import io

    import tensorflow_datasets as tfds
    from PIL import Image
    from tensorflow_datasets.core.features import image_feature

    shape = next(iter(splits.values()))[0].shape[1:]

    def encode_png(self, image):
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
        return buf.getvalue()

    class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=shape), "label": tfds.features.ClassLabel(num_classes=num_classes)}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(*arrays) for split, arrays in splits.items()}

        def _generate_examples(self, images, labels):
            for i, (image, label) in enumerate(zip(images, labels)):
                yield i, {"image": image, "label": int(label)}

    Builder.name = name
    original = image_feature._ImageEncoder._encode_image
    image_feature._ImageEncoder._encode_image = encode_png
    try:
        builder = Builder(data_dir=data_dir, file_format="array_record")
        builder.download_and_prepare()
    finally:
        image_feature._ImageEncoder._encode_image = original
    return str(builder.data_path)

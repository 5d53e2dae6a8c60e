"""TFDS dataset folder of the ``caffe`` builder (see ``caffe_dataset_builder.py``)."""

"""TFDS dataset folder of the ``ssl4sar`` builder (see ``ssl4sar_dataset_builder.py``)."""

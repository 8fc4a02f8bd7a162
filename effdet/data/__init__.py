"""Datasets: COCO annotations in, TFRecord shards out, and back again."""

"""Tests of ``bridges``: the converters and launchers of timm, Detectron2, UperNet and transformers, the demo and
the CLI."""

import hashlib

import zoo


def test_fetch_both_colliding_basenames(tiny_zoo):
    a = zoo.fetch("vit_micro/coco/4000", quiet=True)
    b = zoo.fetch("vit_micro/in1k/800", quiet=True)
    assert a.name == b.name and a != b
    assert a.read_bytes() == tiny_zoo.files["vit_micro/coco/4000"]
    assert b.read_bytes() == tiny_zoo.files["vit_micro/in1k/800"]

from setuptools import find_packages, setup

TRANSFORMERS = "transformers>=5.0,<6"
TENSORBOARD = "tensorboard>=2.12"
MATPLOTLIB = "matplotlib>=3.5"
DEMO = ["scikit-image>=0.21", "scikit-learn>=1.2", TRANSFORMERS, MATPLOTLIB]

setup(
    name="long-seq-mae",
    version="0.1.0",
    description="Model zoo and fine-tuning bridges for the long-sequence MAE checkpoints",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0 (code); the released weights are CC-BY-NC-4.0",
    python_requires=">=3.10",
    packages=find_packages(include=["zoo", "zoo.*", "pretrain", "pretrain.*", "bridges", "bridges.*",
                                    "detection_configs"]),
    # detection_configs: Detectron2 LazyConfig files, read by `lsmae detect --config NAME`
    package_data={"zoo": ["registry.json", "assets/*.pth"], "detection_configs": ["*.py", "README.md"]},
    # what the code imports, with the oldest versions it relies on
    install_requires=[
        "torch>=2.4",  # torch.load(mmap=True), serialization.safe_globals, fused AdamW on CPU
        "torchvision>=0.19",  # the torchvision release of torch 2.4
        "timm>=1.0.15,<2",  # Block(attn_layer=...), layers.resample_abs_pos_embed
        "numpy>=1.24",
        "Pillow>=10.1",  # ImageFont.load_default(size=...): the scalable font of the picture titles
        "safetensors>=0.4",
        "requests>=2.28",
        "filelock>=3.12",
        "tqdm>=4.60",
        "iopath>=0.1.9",  # the lsmae:// path handler for Detectron2's PathManager
        "fvcore>=0.1.5",  # Detectron2's checkpointer
    ],
    extras_require={
        "tpu": ["torch_xla>=2.5"],  # SPMD (use_spmd, ShardingSpec minibatch), torch_xla.sync; tested: 2.9
        # `lsmae detect`: detectron2 itself is installed from source (not on PyPI, see the README)
        "detect": ["omegaconf>=2.1", "pycocotools>=2.0.6", "shapely>=2.0", "setuptools<81", "fairscale",
                   "opencv-python-headless"],  # Detectron2's Visualizer (--save-pictures)
        # TensorBoard event files beside log.jsonl (training runs log JSON lines without it)
        "tensorboard": [TENSORBOARD],
        # the Hugging Face bridges (segmentation, transformers export)
        "hf": [TRANSFORMERS],
        # `lsmae plot`: training curves of run folders
        "plot": [MATPLOTLIB],
        # `lsmae demo`: photographs bundled in scikit-image, digits in scikit-learn; transformers for its HF and
        # segmentation steps, matplotlib for its training curves
        "demo": DEMO,
        # ruff pinned: .ci/run lints with it (ruff.toml), and each release adds rules
        "test": ["pytest>=7", "ruff==0.17.6", TENSORBOARD, *DEMO],
    },
    entry_points={"console_scripts": ["lsmae=bridges.cli:main"]},
)

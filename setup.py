from setuptools import find_packages, setup

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
    install_requires=[
        "torch>=2.4",
        "timm>=1.0,<2",
        "fvcore",
        "iopath",
        "requests",
        "filelock>=3.12",
        "tqdm",
        "tensorboard",
    ],
    extras_require={
        "tpu": ["torch_xla"],
        # `lsmae demo`: photographs bundled in scikit-image, handwritten digits bundled in scikit-learn
        "demo": ["scikit-image>=0.21", "scikit-learn>=1.2"],
        "test": ["pytest>=7", "scikit-image>=0.21", "scikit-learn>=1.2"],
    },
    entry_points={"console_scripts": ["lsmae=bridges.cli:main"]},
)

"""keras-softkd: teacher-free self-knowledge-distillation for Keras 3."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "keras_softkd" / "__init__.py").read_text()
).group(1)

setup(
    name="keras-softkd",
    version=VERSION,
    description=(
        "Label smoothing, LsrKD, teacher correction, memory-replay KD (MrKD) and "
        "Pseudo-KD for Keras 3"
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_softkd", "keras_softkd.*"]),
    install_requires=[
        "keras>=3.8,<4",
        "tensorflow>=2.18",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets imports it on Python 3.11 without declaring it.
        "importlib_resources",
        "absl-py",
        "tensorboard",
        "numpy",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel",
            "matplotlib",
        ],
        "plots": ["matplotlib"],
        # The JAX and PyTorch (CPU) backends, for tests/test_backends.py.
        "backends": ["jax[cpu]", "torch==2.13.0"],
        "bench": ["torch==2.13.0"],
        # The grid on a Ray cluster (python -m keras_softkd.grid --ray_address=...); tested with
        # this version on Python 3.11. Plain `ray`: `ray start` and tasks need nothing of
        # ray[default] (the dashboard and its web-server packages).
        "cluster": ["ray==2.60.0"],
        # Text classifiers (GLUE, P section 4.2): KerasHub models and their tokenizers
        # (keras-hub pulls tensorflow-text).
        "text": ["keras-hub==0.32.0"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Keras",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

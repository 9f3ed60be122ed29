"""toolgen_jax: generative tool retrieval and calling with learned tool-code tokens, in JAX."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.6",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "chex>=0.1.88",
    "ml-collections>=1.0",
    "absl-py>=2.1",
    "numpy>=1.26",
    "scipy>=1.11",
    "transformers>=4.46",
    "tokenizers>=0.20",
    "sentencepiece>=0.2",
    "safetensors>=0.4",
    "gguf>=0.10",
    "scikit-learn>=1.4",
    "bm25s>=0.2",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "jsonschema>=4.0",
    "pydantic>=2.5",      # serve: request models
    "starlette>=0.37",    # serve: the ASGI app
    "uvicorn>=0.30",      # serve: the ASGI server (h11)
    "h11>=0.14",
]

EXTRAS = {
    # PyTorch is only the *reference* for parity tests and the side-by-side benchmarks; install the CPU build first
    # (`pip install torch==2.13.0`) so that accelerate does not pull a CUDA build.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "torch>=2.4", "accelerate>=1.0",
             "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
    # Accelerators (`bash launch/setup.sh --cuda | --cuda13 | --tpu`): JAX's device wheels, no PyTorch.
    "cuda12": ["jax[cuda12]"],
    "cuda13": ["jax[cuda13]"],
    "tpu": ["jax[tpu]"],
    "grain": ["grain>=0.2"],
    "stem": ["PyStemmer>=2.2"],  # optional Snowball stemming for the BM25 baseline (evaluation/bm25.py stemmer=)
}

setup(
    name="toolgen_jax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["toolgen_jax", "toolgen_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)

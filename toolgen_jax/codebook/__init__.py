"""Tool tokenization: sentence encoders, quantisers (RQ-VAE, residual k-means, baselines) and the Codebook artifact."""

from toolgen_jax.codebook.embed import Encoder, cached_encode, encode_texts, load_encoder

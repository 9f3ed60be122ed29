"""Tool tokenization: sentence encoders, quantisers (RQ-VAE, residual k-means, baselines) and the Codebook artifact.

    from toolgen_jax import codebook
    x = codebook.encode_texts(docs)                         # [N, 384] MiniLM (Flax), L2-normalised
    cb = codebook.build(config.codebook, x, names, cooccurrence=graph, encoder=enc_info)
    cb.codes[cb.active]; cb.add_tools(docs=new_docs); cb.save(dir)   # tokens: toolgen_jax.code_vocab
"""

from toolgen_jax.codebook.codebook import (AddReport, Codebook, build, from_baseline, from_residual_kmeans,
                                           from_rqvae, load)
from toolgen_jax.codebook.collisions import CollisionReport, collision_rate, resolve
from toolgen_jax.codebook.embed import Encoder, cached_encode, encode_texts, load_encoder
from toolgen_jax.codebook.kmeans import KMeansResult
from toolgen_jax.codebook.residual_kmeans import ResidualKMeansConfig
from toolgen_jax.codebook.rqvae import CODE_LAMBDA, PAPER_LAMBDA, RQVAEConfig
from toolgen_jax.codebook.sinkhorn import sinkhorn_assign

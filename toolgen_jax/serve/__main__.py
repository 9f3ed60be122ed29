"""`python -m toolgen_jax.serve`."""

from toolgen_jax.serve import main

main()

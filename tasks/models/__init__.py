"""The models room: what every model-using stage shares.

  loading      finding packaged models, sha256 pins, safetensors only, the LM's cached conversion, the vector
               cache, devices and the CPU precision check
  batching     length-sorted token-budget batches, collated in a thread, split on out-of-memory
  embeddings   sentence embeddings (mean pooling, L2-normalized)
  perplexity   token-mean NLL and bits per character under a causal LM
  shared       the embedder and the LM loaded once per process, whichever stage asks first
  generation   augment's local generator: batched, seeded sampling from the shared LM
  kmeans       spherical k-means: one seeding, the same Lloyd code on a CPU and a CUDA device
  classifiers  the quality head and the proxy classifier (training dynamics, label noise)
  sampling     one hash sampler of ids, a seed per purpose

Stages (score, augment) import from here; nothing here imports a stage.
"""

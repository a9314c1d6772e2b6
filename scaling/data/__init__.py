"""Data: prepared corpora (token shards + manifest, or a flat token file + sidecar; in a local
directory or a gs:// / s3:// bucket), tokenizers, and the Grain pipeline.

    corpus = scaling.data.load(config.data)          # opens data.corpus, or prepares a source into data.cache_dir
    loader, info = scaling.data.train_loader(corpus, seq_len=..., global_batch=...,
                                             num_steps=..., seed=config.data.seed)
    evals = scaling.data.eval_batches(corpus, seq_len=..., batch_size=..., n_tokens=...)
    bpb = scaling.data.bits_per_byte(loss, corpus.bytes_per_token_eval)
    scaling.data.sharded.prepare(source, out, processes=K)   # what `scaling data prepare` runs

Modules: sources (text in), tokenizers, preparation (the flat format, the shared encoder),
sharded (plan / encode shards / finalize), shards (the sharded format), tokens (a split as one
stream over its files), store (local or fsspec locations), corpus (opening; the cache), pipeline.
"""
from scaling.data.corpus import Corpus, bits_per_byte, load, open_corpus
from scaling.data.preparation import prepare
from scaling.data.pipeline import eval_batches, train_loader

__all__ = ["Corpus", "bits_per_byte", "eval_batches", "load", "open_corpus", "prepare",
           "train_loader"]

"""Data: prepared corpora (token memmaps + sidecar), tokenizers, and the Grain pipeline.

    corpus = scaling.data.load(config.data)          # prepares into data.cache_dir if missing
    loader, info = scaling.data.train_loader(corpus, seq_len=..., global_batch=...,
                                             num_steps=..., seed=config.data.seed)
    evals = scaling.data.eval_batches(corpus, seq_len=..., batch_size=..., n_tokens=...)
    bpb = scaling.data.bits_per_byte(loss, corpus.bytes_per_token_eval)
"""
from scaling.data.corpus import Corpus, bits_per_byte, load, open_corpus
from scaling.data.preparation import prepare
from scaling.data.pipeline import eval_batches, train_loader

__all__ = ["Corpus", "bits_per_byte", "eval_batches", "load", "open_corpus", "prepare",
           "train_loader"]

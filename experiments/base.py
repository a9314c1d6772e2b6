"""Base config: one small decoder-only LM on the embedded corpus (byte-level), every key at the
trainer's default (scaling/config.py `defaults()` lists the keys, their units and their meaning).

    scaling train --config experiments/base.py --workdir runs/base
    scaling train --config experiments/base.py --config.model.d_model=256 --workdir runs/d256

Takes ~1 minute on 2 CPU cores (2M tokens, 977 steps of a 0.4M-parameter model); expect a final
eval loss of about 1.6-1.7 nats/token (byte-level) in runs/base/result.json.

An experiment file's get_config() returns only what differs from those defaults; the loader lays
it over them (and a sweep's `sweep` and `cloud` sections over theirs). `cloud_lm` below is the part
the cloud sweeps share.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict()  # nothing differs from the defaults


def cloud_lm(seq_len: int) -> ml_collections.ConfigDict:
    """The cloud sweeps' shared model and data: bf16, untied 32k-BPE LM on FineWeb-Edu, FSDP over the pod.

    Before launching: prepare the corpus once with `scaling data prepare` (BPE, 32k vocab) and copy
    the prepared directory to gs://YOUR-BUCKET/corpora/fineweb-edu-bpe32k; the sweeps mount
    gs://YOUR-BUCKET/corpora at /data (their cloud.data_mounts).
    """
    c = ml_collections.ConfigDict()
    c.model = dict(vocab_size=32768, tie_embeddings=False, compute_dtype="bfloat16")
    c.data = dict(corpus="/data/fineweb-edu-bpe32k",  # prepared corpus dir, mounted from the bucket
                  tokenizer="bpe:32768", seq_len=seq_len)
    c.train = dict(eval_tokens=4_194_304, log_every=50)
    c.mesh = dict(data=1, fsdp=-1)  # FSDP over all chips of the pod
    return c


CORPUS_MOUNTS = (("/data", "gs://YOUR-BUCKET/corpora"),)  # cloud.data_mounts of the cloud sweeps

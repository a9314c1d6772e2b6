"""Base config: one small decoder-only LM on the embedded corpus (byte-level), every key at the
trainer's default (scaling/config_schema.py `defaults()` lists the keys, their units and their meaning).

    scaling train --config experiments/base.py --workdir runs/base
    scaling train --config experiments/base.py --config.model.d_model=256 --workdir runs/d256

Time: 976 steps, 6.3e12 training FLOPs: about 10 minutes on 2 CPU cores at the ~1e10 FLOP/s the
demo sweep assumes (longer on a busy machine). Expected result: the loss leaves the unigram plateau
(~3.0 nats/token) within ~30 steps; a 100-step run of it (--config.train.tokens=204800, its own
cosine decay) measured 2.11 nats/token on held-out text, and the full run goes lower
(final_eval_loss in runs/base/result.json).

An experiment file's get_config() returns only what differs from those defaults; the loader lays
it over them (and a sweep's `sweep` and `cloud` sections over theirs). `cloud_lm` below is the part
the cloud sweeps share.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict()  # nothing differs from the defaults


def cloud_lm(seq_len: int) -> ml_collections.ConfigDict:
    """The cloud sweeps' shared model and data: bf16, untied 32k-BPE LM on FineWeb-Edu, FSDP over the pod.

    Before launching: prepare the corpus once (BPE, 32k vocab) into gs://<your bucket>/corpora/fineweb-edu-bpe32k
    with `scaling data prepare ... --out` that URL, here or as a SkyPilot job on cloud CPU nodes
    (`--backend skypilot --nodes N`; README, Data); the sweeps mount
    gs://<your bucket>/corpora at /data (their cloud.data_mounts), the bucket being the one
    --cloud.bucket=gs://<your bucket>/scaling names.
    """
    c = ml_collections.ConfigDict()
    c.model = dict(vocab_size=32768, tie_embeddings=False, compute_dtype="bfloat16")
    c.data = dict(corpus="/data/fineweb-edu-bpe32k",  # prepared corpus dir, mounted from the bucket
                  tokenizer="bpe:32768", seq_len=seq_len)
    c.train = dict(eval_tokens=4_194_304, log_every=50)
    c.mesh = dict(data=1, fsdp=-1)  # FSDP over all chips of the pod
    return c


CORPUS_MOUNTS = (("/data", "{bucket_root}/corpora"),)  # cloud.data_mounts of the cloud sweeps: gs://<bucket>/corpora

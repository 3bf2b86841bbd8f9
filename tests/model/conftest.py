"""Model tests run single-threaded: tiny tensors, and the CPUs are shared. Shards made by our
own pipeline (demo corpus -> build -> shard) are built once per session and shared."""
import re

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_seeded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory):
    """A tiny WordPiece vocabulary covering the demo sentences (no downloads): [PAD] 0,
    [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, then the words."""
    from lfvila_data.demo import COLOURS, TEMPLATES

    words = {w for t in TEMPLATES for w in re.findall(r"[a-z]+", t.lower().replace("{c}", ""))}
    d = tmp_path_factory.mktemp("tok")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".",
                                            *sorted(words | set(COLOURS))]) + "\n")
    return d


@pytest.fixture(scope="session")
def tokenizer(vocab_dir):
    from lfvila_model.data import load_tokenizer

    return load_tokenizer(str(vocab_dir))


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """Shards from the real pipeline: 3 demo videos x 10 clips, max 6 clips per sample
    (samples of 6 and 4 clips), one sample per shard so ranks and workers can split:
    train-000000..3 and val-000000..1."""
    import ray

    from lfvila_data.build import BuildConfig, run_build
    from lfvila_data.demo import make_corpus
    from lfvila_data.executor.pool import RayTasks
    from lfvila_data.localserver import MediaServer
    from lfvila_data.media.fetch import FetchConfig
    from lfvila_data.media.task import TaskContext
    from lfvila_data.plan.join import PlanConfig
    from lfvila_data.shards.write import ShardConfig, run_shard

    started = not ray.is_initialized()
    if started:  # address="local": never join a cluster someone else left running
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024 * 1024)
    root = tmp_path_factory.mktemp("loader")
    try:
        with MediaServer(root / "www") as srv:
            meta, text = make_corpus(root, srv.url("").rstrip("/"), videos=3, clips=10, seed=0)
            build = root / "build"
            run_build(BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(build),
                                  plan=PlanConfig(max_clips=6),
                                  task=TaskContext(output=str(build), fetch=FetchConfig(retries=2, backoff=0.1))))
        out = root / "shards"
        run_shard([str(build)], str(out), ShardConfig(val_count=2, samples_per_shard=1), write=RayTasks())
    finally:
        if started:
            ray.shutdown()
    return sorted(str(p) for p in out.glob("*.tar"))

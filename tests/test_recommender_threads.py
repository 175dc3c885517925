"""The top-K actor's FAISS threads hold in the thread that calls it: Ray Data calls a map
actor's callable from a thread other than the constructor's, and OpenMP's thread count is
per thread."""

import threading

import faiss
import numpy as np
import pyarrow as pa

from chatrec.catalogue import ItemCatalogue
from chatrec.encoder import to_fixed_size_list
from chatrec.recommender import Recommender
from chatrec.retrieval import ExactIndex


def test_a_call_from_another_thread_searches_with_the_configured_threads():
    vectors = np.eye(4, dtype=np.float32)
    ids = ["a", "b", "c", "d"]
    catalogue = ItemCatalogue(item_ids=np.array(ids, dtype=object), vectors=vectors, display_titles=ids,
                              categories=[frozenset()] * 4, entities=[frozenset()] * 4, entity_items={})
    fresh = {}
    probe = threading.Thread(target=lambda: fresh.setdefault("threads", faiss.omp_get_max_threads()))
    probe.start()
    probe.join()
    wanted = fresh["threads"] + 1  # not what a new thread starts with
    recommender = Recommender(index=ExactIndex.build(vectors).to_bytes(), catalogue=catalogue, top_k=2,
                              search_batch_size=8, run_id="r", threads=wanted)
    batch = pa.table({"user_id": ["u"], "embedding": to_fixed_size_list(vectors[:1]),
                      "seen_rows": pa.array([[0]], pa.list_(pa.int32())),
                      "recent_rows": pa.array([[0]], pa.list_(pa.int32()))})
    seen = {}

    def call() -> None:
        seen["before"] = faiss.omp_get_max_threads()
        seen["rows"] = recommender(batch).num_rows
        seen["after"] = faiss.omp_get_max_threads()

    worker = threading.Thread(target=call)
    worker.start()
    worker.join()
    assert seen["before"] != wanted and seen["after"] == wanted and seen["rows"] == 2
